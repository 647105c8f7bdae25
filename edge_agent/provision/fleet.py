"""An emulated fleet: one network namespace per board, veth links per the inventory, brokers and agents from
the provisioned bundles. Needs root (ip netns, iptables); `tools/fleet.py` is its command line.

Addresses (inside the namespaces only; the host's own network is never touched):
    board n           10.200.0.n/32 on its loopback, what the inventory's `address` becomes
    link i (a - b)    10.201.i.1/30 on a's side, 10.201.i.2/30 on b's side, a route to the peer's board address
    operator          its own namespace `<prefix>-ops`, linked to every board n over 10.202.n.0/30: user apps
                      (`fleet.py ask`, `fleet.py exec ops -- ...`) run there, like a laptop on the boards' LAN
Cut and loss are iptables rules on a link's veth ends (INPUT: DROP / statistic random DROP); delay is a userspace
proxy (delay_proxy.py) in the child's namespace that the bridge's connection is redirected through.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tomllib

from ..child_process import alive, stop_group
from ..errors import EdgeMoaError
from .bundle import provision
from .inventory import Inventory
from .render import in_place_layout
from .tree import choose_tree

log = logging.getLogger(__name__)
STATE_FILE = "fleet.json"
OPS_USER = "fleet-ops"
PROXY_PORT_BASE = 41000


class FleetError(EdgeMoaError):
    code = "fleet"


@dataclass
class LinkState:
    a: str
    b: str
    index: int
    veth_a: str
    veth_b: str
    ip_a: str
    ip_b: str
    child: str | None  # on the tree: the side whose broker dials the other; None: link left out of the tree
    cut: bool = False
    delay_ms: float = 0.0
    loss: float = 0.0
    proxy_pid: int | None = None

    @property
    def parent(self) -> str | None:
        return None if self.child is None else (self.b if self.child == self.a else self.a)


@dataclass
class FleetState:
    fleet_id: str
    directory: str
    prefix: str
    boards: dict[str, int]  # board -> n (its address is 10.200.0.n)
    ports: dict[str, int]
    links: list[LinkState]
    engine: str
    pids: dict[str, int] = field(default_factory=dict)  # "mosquitto:<board>" / "agent:<board>" -> pid
    namespaces: list[str] = field(default_factory=list)  # created so far (cleaned up by `down`)

    def ns(self, board: str) -> str:
        return f"{self.prefix}-{board}" if board != "ops" else f"{self.prefix}-ops"

    def address(self, board: str) -> str:
        return f"10.200.0.{self.boards[board]}"

    def link(self, a: str, b: str) -> LinkState:
        for link in self.links:
            if {link.a, link.b} == {a, b}:
                return link
        raise FleetError(f"no link between {a} and {b}")

    def save(self) -> None:
        path = Path(self.directory) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(path)

    @classmethod
    def load(cls, directory: Path) -> FleetState:
        path = Path(directory) / STATE_FILE
        if not path.exists():
            raise FleetError(f"no fleet in {directory} ({STATE_FILE} missing)")
        data = json.loads(path.read_text())
        data["links"] = [LinkState(**link) for link in data["links"]]
        return cls(**data)


def plan(inventory: Inventory, directory: Path, engine: str, fleet_id: str | None = None) -> FleetState:
    """Names and addresses for every namespace and link (no I/O)."""
    fleet_id = fleet_id or secrets.token_hex(2)
    ids = sorted(board.id for board in inventory.boards)
    if len(ids) > 250:
        raise FleetError("at most 250 boards in an emulated fleet")
    tree = choose_tree(inventory)
    links = []
    for i, link in enumerate(inventory.all_links()):
        a, b = sorted(link.between)
        child = next((c for c in (a, b) if tree.parent.get(c) == ({a, b} - {c}).pop()), None)
        links.append(LinkState(a=a, b=b, index=i, veth_a=f"em{fleet_id}{i}a", veth_b=f"em{fleet_id}{i}b",
                               ip_a=f"10.201.{i}.1", ip_b=f"10.201.{i}.2", child=child))
    return FleetState(fleet_id=fleet_id, directory=str(directory), prefix=f"emoa-{fleet_id}",
                      boards={board: n for n, board in enumerate(ids, 1)},
                      ports={b.id: inventory.port_of(b) for b in inventory.boards}, links=links, engine=engine)


def emulated_inventory(inventory: Inventory, state: FleetState) -> Inventory:
    """The inventory with the fleet's addresses, brokers listening everywhere, and the operator's app user."""
    data = inventory.model_dump(mode="json")
    data["mesh"]["bind"] = ""
    data["mesh"]["engine"] = state.engine
    for board in data["boards"]:
        board["address"] = state.address(board["id"])
        board["bind"] = None
    if not any(user["name"] == OPS_USER for user in data["users"]):
        data["users"].append({"name": OPS_USER, "devices": ["*"]})
    return Inventory.model_validate(data)


# ------------------------------------------------------------------ commands run as root


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise FleetError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _in_ns(state: FleetState, board: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return _run("ip", "netns", "exec", state.ns(board), *cmd, check=check)


def up(inventory: Inventory, directory: Path, *, engine: str = "synthetic", agents: bool = True,
       timeout_s: float = 30.0) -> FleetState:
    """Create namespaces and links, provision the bundles in place, start brokers (parents first) and agents.

    State is saved after every step, so `down` cleans up whatever exists even when `up` fails half-way.
    """
    if os.geteuid() != 0:
        raise FleetError("the emulated fleet needs root (network namespaces, iptables)")
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / STATE_FILE).exists():
        raise FleetError(f"a fleet is already up in {directory}: `fleet.py down --dir {directory}` first")
    state = plan(inventory, directory, engine)
    state.save()
    try:
        _create_network(state)
        emulated = emulated_inventory(inventory, state)
        provision(emulated, directory / "out", layout_for=in_place_layout)
        (directory / "logs").mkdir(exist_ok=True)
        tree = choose_tree(emulated)
        order = [tree.root] + sorted(tree.parent, key=lambda b: _depth(tree.parent, b))
        for board in order:
            _start(state, board, f"mosquitto:{board}",
                   ["mosquitto", "-c", str(directory / "out" / "boards" / board / "mosquitto" / "mosquitto.conf")])
            _wait_listening(state, board, state.ports[board], timeout_s)
        if agents:
            for board in order:
                start_agent(state, board)
    except BaseException:
        down(directory)
        raise
    return state


def _depth(parent: dict[str, str], board: str) -> int:
    depth = 0
    while board in parent:
        board, depth = parent[board], depth + 1
    return depth


def _create_network(state: FleetState) -> None:
    for board in [*state.boards, "ops"]:
        _run("ip", "netns", "add", state.ns(board))
        state.namespaces.append(state.ns(board))
        state.save()
        _in_ns(state, board, "ip", "link", "set", "lo", "up")
    for board, n in state.boards.items():
        _in_ns(state, board, "ip", "addr", "add", f"10.200.0.{n}/32", "dev", "lo")
    for link in state.links:
        _run("ip", "link", "add", link.veth_a, "netns", state.ns(link.a), "type", "veth", "peer", "name",
             link.veth_b, "netns", state.ns(link.b))
        for board, veth, ip, peer, peer_ip in ((link.a, link.veth_a, link.ip_a, link.b, link.ip_b),
                                               (link.b, link.veth_b, link.ip_b, link.a, link.ip_a)):
            _in_ns(state, board, "ip", "addr", "add", f"{ip}/30", "dev", veth)
            _in_ns(state, board, "ip", "link", "set", veth, "up")
            _in_ns(state, board, "ip", "route", "add", f"{state.address(peer)}/32", "via", peer_ip, "dev", veth)
    for board, n in state.boards.items():
        ops_veth, board_veth = f"em{state.fleet_id}o{n}", f"em{state.fleet_id}p{n}"
        _run("ip", "link", "add", ops_veth, "netns", state.ns("ops"), "type", "veth", "peer", "name", board_veth,
             "netns", state.ns(board))
        _in_ns(state, "ops", "ip", "addr", "add", f"10.202.{n}.1/30", "dev", ops_veth)
        _in_ns(state, "ops", "ip", "link", "set", ops_veth, "up")
        _in_ns(state, "ops", "ip", "route", "add", f"{state.address(board)}/32", "via", f"10.202.{n}.2")
        _in_ns(state, board, "ip", "addr", "add", f"10.202.{n}.2/30", "dev", board_veth)
        _in_ns(state, board, "ip", "link", "set", board_veth, "up")


def _start(state: FleetState, board: str, key: str, command: list[str]) -> int:
    """Start `command` in the board's namespace, detached (it outlives `fleet.py up`); its pid is kept as `key`."""
    log_path = Path(state.directory) / "logs" / f"{key.replace(':', '-')}.log"
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(["ip", "netns", "exec", state.ns(board), *command], stdout=log_file,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    state.pids[key] = proc.pid
    state.save()
    return proc.pid


def start_agent(state: FleetState, board: str) -> int:
    config = Path(state.directory) / "out" / "boards" / board / "agent.toml"
    return _start(state, board, f"agent:{board}", [sys.executable, "-m", "edge_agent", "agent", "--config", str(config)])


def stop_process(state: FleetState, key: str, timeout_s: float = 10.0) -> None:
    """Terminate then kill one of the fleet's processes (`mosquitto:<board>`, `agent:<board>`, `proxy:<i>`)."""
    pid = state.pids.pop(key, None)
    if pid is not None:
        stop_group(pid, timeout_s)
    state.save()


def _wait_listening(state: FleetState, board: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = _in_ns(state, board, "ss", "-Hltn", f"sport = :{port}", check=False).stdout
        if out.strip():
            return
        time.sleep(0.1)
    logs = "\n".join(p.read_text(errors="replace")[-1500:] for p in (Path(state.directory) / "logs").glob(f"*-{board}.log"))
    raise FleetError(f"nothing listens on {board}:{port} after {timeout_s}s; logs:\n{logs}")


def down(directory: Path) -> None:
    """Stop every process and delete every namespace of the fleet in `directory`; safe to run twice."""
    try:
        state = FleetState.load(directory)
    except FleetError:
        return
    for key in sorted(state.pids, key=lambda k: not k.startswith("agent")):  # agents first, brokers last
        try:
            stop_group(state.pids[key])
        except OSError as exc:
            log.warning("cannot stop %s: %s", key, exc)
    state.pids.clear()
    for ns in state.namespaces:
        _kill_leftovers(ns)
        _run("ip", "netns", "delete", ns, check=False)
    (Path(directory) / STATE_FILE).unlink(missing_ok=True)


def prune(prefix: str = "emoa-") -> list[str]:
    """Delete every namespace named `<prefix>*` and kill what runs in it, whichever fleet it belongs to.

    For the leftovers of a fleet whose folder is gone (e.g. a test run killed with SIGKILL)."""
    names = [ns for ns in _run("ip", "netns", "list").stdout.split() if ns.startswith(prefix)]
    for ns in names:
        _kill_leftovers(ns)
        _run("ip", "netns", "delete", ns, check=False)
    return names


def _kill_leftovers(ns: str) -> None:
    """Anything still running inside one of our namespaces (e.g. a command started with `fleet.py exec`)."""
    proc = _run("ip", "netns", "pids", ns, check=False)
    for pid in proc.stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


# ------------------------------------------------------------------ link faults


def _veth_ends(link: LinkState) -> list[tuple[str, str]]:
    return [(link.a, link.veth_a), (link.b, link.veth_b)]


def _rule(state: FleetState, board: str, action: str, *spec: str) -> None:
    """Add (-I) or delete (-D) one iptables rule, deleting quietly if it is not there."""
    _in_ns(state, board, "iptables", action, *spec, check=action != "-D")


def cut(state: FleetState, a: str, b: str) -> LinkState:
    link = state.link(a, b)
    if not link.cut:
        for board, veth in _veth_ends(link):
            _rule(state, board, "-I", "INPUT", "-i", veth, "-m", "comment", "--comment", "emoa-cut", "-j", "DROP")
        link.cut = True
        state.save()
    return link


def heal(state: FleetState, a: str, b: str) -> LinkState:
    link = state.link(a, b)
    if link.cut:
        for board, veth in _veth_ends(link):
            _rule(state, board, "-D", "INPUT", "-i", veth, "-m", "comment", "--comment", "emoa-cut", "-j", "DROP")
        link.cut = False
        state.save()
    return link


def set_loss(state: FleetState, a: str, b: str, probability: float) -> LinkState:
    """Drop each packet on the link with `probability`, both ways (0 = no loss)."""
    if not 0 <= probability < 1:
        raise FleetError("loss must be in [0, 1)")
    link = state.link(a, b)
    for board, veth in _veth_ends(link):
        if link.loss:
            _rule(state, board, "-D", "INPUT", "-i", veth, "-m", "statistic", "--mode", "random", "--probability",
                  f"{link.loss:.6f}", "-m", "comment", "--comment", "emoa-loss", "-j", "DROP")
        if probability:
            _rule(state, board, "-A", "INPUT", "-i", veth, "-m", "statistic", "--mode", "random", "--probability",
                  f"{probability:.6f}", "-m", "comment", "--comment", "emoa-loss", "-j", "DROP")
    link.loss = probability
    state.save()
    return link


def set_delay(state: FleetState, a: str, b: str, delay_ms: float) -> LinkState:
    """Add `delay_ms` each way to the bridge on this link (0 = none). Links left out of the tree carry no bridge."""
    link = state.link(a, b)
    if link.child is None:
        raise FleetError(f"link {a} - {b} is not on the bridge tree: no traffic to delay")
    child, parent = link.child, link.parent
    parent_address, port = state.address(parent), state.ports[parent]
    parent_link_ip = link.ip_a if parent == link.a else link.ip_b
    proxy_port = PROXY_PORT_BASE + link.index
    redirect = ("-t", "nat", "OUTPUT", "-p", "tcp", "-d", parent_address, "--dport", str(port), "-m", "comment",
                "--comment", "emoa-delay", "-j", "REDIRECT", "--to-ports", str(proxy_port))
    if link.delay_ms:
        _in_ns(state, child, "iptables", "-t", "nat", "-D", *redirect[2:], check=False)
        stop_process(state, f"proxy:{link.index}")
        link.proxy_pid = None
        # the bridge's connection ran through the proxy: close it so the bridge reconnects directly
        _in_ns(state, child, "ss", "-K", "dst", "127.0.0.1", "dport", "=", f":{proxy_port}", check=False)
    if delay_ms:
        link.proxy_pid = _start(state, child, f"proxy:{link.index}", [
            sys.executable, "-m", "edge_agent.provision.delay_proxy", "--listen", f"127.0.0.1:{proxy_port}",
            "--to", f"{parent_link_ip}:{port}", "--delay-ms", str(delay_ms)])
        _wait_listening(state, child, proxy_port, 10.0)
        _in_ns(state, child, "iptables", "-t", "nat", "-A", *redirect[2:])
        # the bridge's current connection bypasses the new rule: close it so the bridge reconnects via the proxy
        _in_ns(state, child, "ss", "-K", "dst", parent_address, "dport", "=", f":{port}", check=False)
    link.delay_ms = delay_ms
    state.save()
    return link


# ------------------------------------------------------------------ looking at it


def status(state: FleetState) -> dict:
    existing = set(_run("ip", "netns", "list").stdout.split())
    boards = {}
    for board in state.boards:
        boards[board] = {
            "namespace": state.ns(board) if state.ns(board) in existing else None,
            "address": f"{state.address(board)}:{state.ports[board]}",
            "mosquitto": alive(state.pids.get(f"mosquitto:{board}", -1)),
            "agent": alive(state.pids.get(f"agent:{board}", -1)),
        }
    links = [{"between": [l.a, l.b], "bridge": f"{l.child} -> {l.parent}" if l.child else None, "cut": l.cut,
              "delay_ms": l.delay_ms, "loss": l.loss} for l in state.links]
    return {"fleet": state.fleet_id, "directory": state.directory, "engine": state.engine, "boards": boards,
            "links": links}


def describe_status(info: dict) -> str:
    lines = [f"fleet {info['fleet']} in {info['directory']} (engine {info['engine']})"]
    for board, s in sorted(info["boards"].items()):
        lines.append(f"  {board:<12} {s['address']:<20} netns {'up' if s['namespace'] else 'MISSING':<8} "
                     f"mosquitto {'running' if s['mosquitto'] else 'stopped':<8} agent {'running' if s['agent'] else 'stopped'}")
    for link in info["links"]:
        faults = [f for f, on in (("CUT", link["cut"]), (f"delay {link['delay_ms']:g} ms", link["delay_ms"]),
                                  (f"loss {link['loss']:g}", link["loss"])) if on]
        lines.append(f"  link {link['between'][0]} - {link['between'][1]}: "
                     f"{'bridge ' + link['bridge'] if link['bridge'] else 'no bridge (left out of the tree)'}"
                     f"{'; ' + ', '.join(faults) if faults else ''}")
    return "\n".join(lines)


def ops_credentials(state: FleetState) -> dict:
    """Broker settings of the operator's user app, for a broker of `board` reached from the ops namespace."""
    out = Path(state.directory) / "out"
    user = out / "users" / OPS_USER
    password = next(line.split()[1] for line in (out / "secrets" / "passwords").read_text().splitlines()
                    if line.startswith(OPS_USER + " "))
    creds = {"username": OPS_USER, "password": password}
    if (user / "ca.crt").exists():
        creds["tls_ca_file"] = str(user / "ca.crt")
        if (user / f"{OPS_USER}.crt").exists():
            creds["tls_cert_file"] = str(user / f"{OPS_USER}.crt")
            creds["tls_key_file"] = str(user / f"{OPS_USER}.key")
    return creds


def topic_root(state: FleetState) -> str:
    board = min(state.boards)
    config = tomllib.loads((Path(state.directory) / "out" / "boards" / board / "agent.toml").read_text())
    return config["mqtt"]["topic_root"]


def exec_in(state: FleetState, board: str, command: list[str], **kwargs) -> subprocess.CompletedProcess:
    if board != "ops" and board not in state.boards:
        raise FleetError(f"no board {board!r} (boards: {', '.join(sorted(state.boards))}, or ops)")
    return subprocess.run(["ip", "netns", "exec", state.ns(board), *command], check=False, **kwargs)
