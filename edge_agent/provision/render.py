"""Rendering a board's files from the shipped templates (broker/, tools/): pure text, no I/O but template reads."""

from __future__ import annotations

import getpass
import json
from dataclasses import dataclass
from pathlib import Path

import jinja2
import tomllib

from ..config import parse_config
from ..resources import data_dir
from .inventory import Board, Inventory
from .tree import BridgeTree

TEMPLATE_DIRS = (data_dir("broker"), data_dir("provision"), data_dir("systemd"))
CONFIG_DIR = "/etc/edge-moa"
SERVICE_USER = "edge-moa"
CREDENTIALS_DIR = "/run/credentials/edge-moa-agent.service"  # systemd's $CREDENTIALS_DIRECTORY of the unit
GATEWAY_CREDENTIALS_DIR = "/run/credentials/edge-moa-gateway.service"


@dataclass(frozen=True)
class Layout:
    """Where a board's files are when its broker and agent run: installed (/etc) or in place (the bundle)."""

    state_dir: str
    agent_password_file: str
    agent_ca_file: str
    agent_cert_file: str
    agent_key_file: str
    broker_ca_file: str
    broker_cert_file: str
    broker_key_file: str
    broker_passwd_file: str
    broker_acl_file: str
    broker_persistence_dir: str
    broker_user: str | None
    log_timestamp: bool


def installed_layout() -> Layout:
    """The board as install.sh sets it up (Debian's mosquitto.service with our drop-in, our systemd unit)."""
    return Layout(
        state_dir="/var/lib/edge-moa",
        agent_password_file=f"{CREDENTIALS_DIR}/mqtt-password",
        agent_ca_file=f"{CONFIG_DIR}/tls/ca.crt",
        agent_cert_file=f"{CONFIG_DIR}/tls/board.crt",
        agent_key_file=f"{CREDENTIALS_DIR}/tls-key",
        broker_ca_file=f"{CONFIG_DIR}/mosquitto/ca.crt",
        broker_cert_file=f"{CONFIG_DIR}/mosquitto/board.crt",
        broker_key_file=f"{CONFIG_DIR}/mosquitto/board.key",
        broker_passwd_file=f"{CONFIG_DIR}/mosquitto/passwd",
        broker_acl_file=f"{CONFIG_DIR}/mosquitto/acl",
        broker_persistence_dir="/var/lib/mosquitto",
        broker_user="mosquitto",
        log_timestamp=False,  # journald adds them
    )


def in_place_layout(bundle: Path) -> Layout:
    """The board run straight from its bundle folder (tests, tools/fleet.py), as the current user."""
    b = bundle.resolve()
    return Layout(
        state_dir=str(b / "state" / "agent"),
        agent_password_file=str(b / "credentials" / "mqtt-password"),
        agent_ca_file=str(b / "tls" / "ca.crt"),
        agent_cert_file=str(b / "tls" / "board.crt"),
        agent_key_file=str(b / "tls" / "board.key"),
        broker_ca_file=str(b / "tls" / "ca.crt"),
        broker_cert_file=str(b / "tls" / "board.crt"),
        broker_key_file=str(b / "tls" / "board.key"),
        broker_passwd_file=str(b / "mosquitto" / "passwd"),
        broker_acl_file=str(b / "mosquitto" / "acl"),
        broker_persistence_dir=str(b / "state" / "mosquitto"),
        # Mosquitto started as root drops to user "mosquitto" unless told otherwise; in place, stay who we are.
        broker_user=getpass.getuser(),
        log_timestamp=True,
    )


@dataclass(frozen=True)
class Bridge:
    name: str
    child: str
    parent: str
    address: str
    port: int
    username: str
    password: str
    subtree: tuple[str, ...]


def bridge_username(child: str) -> str:
    """`bridge.<child>`: a dot never occurs in device ids or user names, so it cannot collide with them."""
    return f"bridge.{child}"


def gateway_username(board: str) -> str:
    """`gateway.<board>`: the gateway's own broker identity (a dot never occurs in device ids or user names)."""
    return f"gateway.{board}"


def api_key_name(board: str) -> str:
    """The password store's name of a gateway's HTTP API key (not a broker identity)."""
    return f"api-key.{board}"


def broker_usernames(inventory: Inventory, tree: BridgeTree, board: Board | None = None) -> list[str]:
    """The identities a broker lets in: its own agent, the bridges of its children on the tree, its gateway (when
    the inventory asks for one), the user apps.

    Without `board`: every identity of the mesh. A board's agent is known to its own broker only, so its
    credentials cannot even log in elsewhere (and a bridge would not carry its traffic from there anyway).
    """
    boards = [board] if board else sorted(inventory.boards, key=lambda b: b.id)
    children = tree.children(board.id) if board else sorted(tree.parent)
    gateways = [gateway_username(b.id) for b in boards if inventory.gateway_of(b)]
    return ([b.id for b in boards] + [bridge_username(c) for c in children] + gateways
            + sorted(u.name for u in inventory.users))


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(d) for d in TEMPLATE_DIRS]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["toml"] = lambda value: json.dumps(str(value))  # a JSON string is a valid TOML basic string
    return env


_ENV = _environment()


def _bridges(inventory: Inventory, tree: BridgeTree, board: Board, password_of) -> list[Bridge]:
    if board.id not in tree.parent:
        return []
    parent = inventory.board(tree.parent[board.id])
    username = bridge_username(board.id)
    return [Bridge(name=f"edge-moa-{board.id}-to-{parent.id}", child=board.id, parent=parent.id,
                   address=parent.address, port=inventory.port_of(parent), username=username,
                   password=password_of(username), subtree=tuple(tree.subtree(board.id)))]


def render_mosquitto_conf(inventory: Inventory, tree: BridgeTree, board: Board, layout: Layout, password_of) -> str:
    """`password_of(username)` gives the bridge's password (it sits in the file: keep the file 0600/0640)."""
    return _ENV.get_template("board.conf.j2").render(
        mesh=inventory.mesh, board=board, layout=layout, port=inventory.port_of(board),
        bind=inventory.bind_of(board), bridges=_bridges(inventory, tree, board, password_of), tree_root=tree.root,
        home_assistant=any(inventory.home_assistant_of(b) for b in inventory.boards),
    )


def render_acl(inventory: Inventory, tree: BridgeTree) -> str:
    bridges = [
        Bridge(name="", child=child, parent=parent, address="", port=0, username=bridge_username(child),
               password="", subtree=tuple(tree.subtree(child)))
        for child, parent in sorted(tree.parent.items())
    ]
    return _ENV.get_template("acl.j2").render(
        mesh=inventory.mesh, boards=sorted(b.id for b in inventory.boards), bridges=bridges,
        users=sorted(inventory.users, key=lambda u: u.name),
        ha_boards={b.id for b in inventory.boards if inventory.home_assistant_of(b)},
        gateways=sorted(b.id for b in inventory.boards if inventory.gateway_of(b)),
    )


def agent_broker_host(bind: str) -> str:
    """Where the agent finds its own broker: loopback, unless the broker listens on one address only."""
    return bind if bind and bind not in ("0.0.0.0", "::", "*") else "127.0.0.1"


def render_agent_toml(inventory: Inventory, board: Board, layout: Layout) -> str:
    text = _ENV.get_template("agent.toml.j2").render(
        mesh=inventory.mesh, board=board, layout=layout, port=inventory.port_of(board),
        broker_host=agent_broker_host(inventory.bind_of(board)),
        model=inventory.model_of(board), memory_max_mb=inventory.memory_max_mb_of(board),
        metrics=inventory.metrics_of(board), home_assistant=inventory.home_assistant_of(board),
    )
    parse_config(tomllib.loads(text))  # the shipped template must always give a valid agent config
    return text


def _unit_context(inventory: Inventory, board: Board) -> dict:
    return {"mesh": inventory.mesh, "board": board, "install_dir": str(inventory.mesh.install_dir),
            "config_dir": CONFIG_DIR, "service_user": SERVICE_USER,
            "memory_max_mb": inventory.memory_max_mb_of(board), "package": inventory.mesh.package,
            "gateway": inventory.gateway_of(board), "gateway_listen": inventory.gateway_listen_of(board),
            "gateway_username": gateway_username(board.id), "port": inventory.port_of(board),
            "gateway_credentials_dir": GATEWAY_CREDENTIALS_DIR}


def render_agent_unit(inventory: Inventory, board: Board) -> str:
    return _ENV.get_template("edge-moa-agent.service.j2").render(**_unit_context(inventory, board))


def render_gateway_unit(inventory: Inventory, board: Board) -> str:
    return _ENV.get_template("edge-moa-gateway.service.j2").render(**_unit_context(inventory, board))


def render_mosquitto_dropin(inventory: Inventory, board: Board) -> str:
    return _ENV.get_template("mosquitto-edge-moa.conf.j2").render(**_unit_context(inventory, board))


def render_install_sh(inventory: Inventory, board: Board) -> str:
    return _ENV.get_template("install.sh.j2").render(
        broker_persistence_dir=installed_layout().broker_persistence_dir, **_unit_context(inventory, board)
    )
