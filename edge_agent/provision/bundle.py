"""Writing the provisioning output: one bundle per board, plus the operator's CA, passwords and user credentials.

    <out>/ca/ca.crt, ca.key            the mesh CA (the key stays here)
    <out>/secrets/passwords            every identity's broker password (0600)
    <out>/mesh/tree.txt, passwd, acl   the tree; every identity's hash; the ACL every bundle holds
    <out>/users/<name>/                a user app's password (and CA, certificate and key with TLS)
    <out>/boards/<id>/                 what install.sh needs on board <id>

Files are written only when their content changes; secrets and certificates are reused, never replaced.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .inventory import Inventory
from .pki import CertificateAuthority, ensure_ca, ensure_certificate
from .render import (
    Layout,
    api_key_name,
    broker_usernames,
    gateway_username,
    installed_layout,
    render_acl,
    render_agent_toml,
    render_agent_unit,
    render_gateway_unit,
    render_install_sh,
    render_mosquitto_conf,
    render_mosquitto_dropin,
)
from .secret import PasswordStore, passwd_lines
from .tree import BridgeTree, choose_tree


@dataclass
class Report:
    """What a provisioning run did, path by path: created, changed, unchanged, issued (certificate), kept."""

    tree: BridgeTree
    actions: dict[Path, str] = field(default_factory=dict)
    stale: list[Path] = field(default_factory=list)  # bundles of boards no longer in the inventory (left alone)

    def changed(self) -> list[Path]:
        return [path for path, action in self.actions.items() if action in ("created", "changed", "issued")]


def provision(inventory: Inventory, out: Path, layout_for: Callable[[Path], Layout] | None = None) -> Report:
    """Render every board's bundle into `out`. `layout_for(bundle_dir)` picks where files live at run time:
    installed on a real board (the default) or in place for tests and the emulated fleet."""
    out = Path(out)
    tree = choose_tree(inventory)
    report = Report(tree=tree)
    store = PasswordStore(out / "secrets" / "passwords")
    mesh = inventory.mesh
    ca = None
    if mesh.tls:
        ca, created = ensure_ca(out / "ca", mesh.name)
        report.actions[ca.cert] = "issued" if created else "kept"

    # The mesh-wide password file keeps every identity's hash, so re-runs reuse hashes (and change nothing);
    # each board's broker gets only the lines of the identities that log in there.
    previous = out / "mesh" / "passwd"
    passwd = passwd_lines(store, broker_usernames(inventory, tree), previous.read_text() if previous.exists() else None)
    hashes = dict(line.split(":", 1) for line in passwd.splitlines())
    acl = render_acl(inventory, tree)
    _write(out / "mesh" / "passwd", passwd, 0o600, report)
    _write(out / "mesh" / "acl", acl, 0o644, report)
    _write(out / "mesh" / "tree.txt", describe(inventory, tree) + "\n", 0o644, report)

    for user in inventory.users:
        folder = out / "users" / user.name
        _write(folder / "password", store.get(user.name) + "\n", 0o600, report)
        if ca:
            _write(folder / "ca.crt", ca.cert.read_text(), 0o644, report)
            if mesh.mutual_tls:
                _certificate(ca, folder / f"{user.name}.crt", folder / f"{user.name}.key", user.name, [user.name],
                             mesh.cert_days, report)

    for board in inventory.boards:
        folder = out / "boards" / board.id
        layout = layout_for(folder) if layout_for else installed_layout()
        _write(folder / "agent.toml", render_agent_toml(inventory, board, layout), 0o644, report)
        _write(folder / "credentials" / "mqtt-password", store.get(board.id) + "\n", 0o600, report)
        if ca:
            _write(folder / "tls" / "ca.crt", ca.cert.read_text(), 0o644, report)
            hosts = [board.id, board.address, "localhost", "127.0.0.1"]
            _certificate(ca, folder / "tls" / "board.crt", folder / "tls" / "board.key", board.id, hosts,
                         mesh.cert_days, report)
        conf = render_mosquitto_conf(inventory, tree, board, layout, store.get)
        _write(folder / "mosquitto" / "mosquitto.conf", conf, 0o600, report)  # holds the bridge's password
        board_passwd = "".join(f"{name}:{hashes[name]}\n" for name in broker_usernames(inventory, tree, board))
        _write(folder / "mosquitto" / "passwd", board_passwd, 0o600, report)
        _write(folder / "mosquitto" / "acl", acl, 0o644, report)
        _write(folder / "systemd" / "edge-moa-agent.service", render_agent_unit(inventory, board), 0o644, report)
        _write(folder / "systemd" / "edge-moa-gateway.service", render_gateway_unit(inventory, board), 0o644, report)
        if inventory.gateway_of(board):
            _write(folder / "credentials" / "gateway-password", store.get(gateway_username(board.id)) + "\n", 0o600,
                   report)
            _write(folder / "credentials" / "gateway-api-key", store.get(api_key_name(board.id)) + "\n", 0o600,
                   report)
        _write(folder / "systemd" / "mosquitto.service.d" / "edge-moa.conf", render_mosquitto_dropin(inventory, board),
               0o644, report)
        _write(folder / "install.sh", render_install_sh(inventory, board), 0o755, report)
        for sub in ("state/agent", "state/mosquitto") if layout_for else ():
            (folder / sub).mkdir(parents=True, exist_ok=True)
    if store.save():
        report.actions[store.path] = "changed"
    known = {board.id for board in inventory.boards}
    if (out / "boards").is_dir():
        report.stale = sorted(p for p in (out / "boards").iterdir() if p.is_dir() and p.name not in known)
    return report


def describe(inventory: Inventory, tree: BridgeTree) -> str:
    """What `provision --check` prints: the mesh, the tree and the links left out."""
    mesh = inventory.mesh
    tls = ("on (mutual)" if mesh.mutual_tls else "on") if mesh.tls else "off"
    lines = [
        (f"mesh {mesh.name}: {len(inventory.boards)} boards, {len(inventory.all_links())} links, "
         f"topic root {mesh.topic_root}, TLS {tls}, M={mesh.layers} k={mesh.proposers}"),
        f"bridge tree (root {tree.root}; each board's broker dials its parent):",
        *("  " + line for line in tree.draw().splitlines()),
    ]
    if tree.left_out:
        lines.append("links left out (each would close a cycle of bridges):")
        lines += [f"  {a} - {b}  (cost {link.cost:g}{', preferred' if link.preferred else ''})"
                  for link in tree.left_out for a, b in [link.between]]
    for board in sorted(inventory.boards, key=lambda b: b.id):
        lines.append(f"board {board.id}: {board.address}:{inventory.port_of(board)}, model {inventory.model_of(board)}, "
                     f"MemoryMax {inventory.memory_max_mb_of(board)}M")
    return "\n".join(lines)


def _certificate(ca: CertificateAuthority, cert: Path, key: Path, name: str, hosts: list[str], days: int,
                 report: Report) -> None:
    issued = ensure_certificate(ca, cert, key, name, hosts, days)
    report.actions[cert] = report.actions[key] = "issued" if issued else "kept"


def _write(path: Path, text: str, mode: int, report: Report) -> None:
    old = path.read_text() if path.exists() else None
    if old == text:
        report.actions[path] = "unchanged"
        if (path.stat().st_mode & 0o777) != mode:
            path.chmod(mode)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, mode)
    tmp.replace(path)
    report.actions[path] = "created" if old is None else "changed"
