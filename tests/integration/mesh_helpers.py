"""Helpers for the mesh tests: a provisioned fleet of real brokers on loopback and a small paho test client."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.child_process import stop_children
from edge_agent.mqtt.broker_process import MosquittoProcess, free_port
from edge_agent.provision import in_place_layout, parse_inventory, provision
from edge_agent.provision.secret import PasswordStore


def cycle_inventory(tls: bool, ports: dict[str, int], root: str, host: str = "127.0.0.1", **mesh) -> dict:
    """Four boards on `host`, each broker bound to it, whose links close a cycle a-b-d-c-a (one link must be left
    out)."""
    return {
        "mesh": {"name": "test", "topic_root": root, "tls": tls, "bind": host, "engine": "synthetic", **mesh},
        "boards": [
            {"id": "a", "address": host, "port": ports["a"], "neighbours": ["b", "c"], "role": "hub"},
            {"id": "b", "address": host, "port": ports["b"], "neighbours": ["d"]},
            {"id": "c", "address": host, "port": ports["c"]},
            {"id": "d", "address": host, "port": ports["d"]},
        ],
        "links": [{"between": ["c", "d"], "cost": 5}],
        "users": [{"name": "app", "devices": ["*"]}, {"name": "narrow", "devices": ["a"]}],
    }


@dataclass
class Identity:
    name: str
    password: str
    ca: Path | None
    cert: Path | None
    key: Path | None


class ProvisionedMesh:
    """Provision an inventory in place under `out`, then run every board's rendered mosquitto.conf."""

    def __init__(self, out: Path, tls: bool = True, host: str = "127.0.0.1", **mesh):
        self.out = out
        self.tls = tls
        self.host = host
        self.ports = {board: free_port(host) for board in "abcd"}
        self.root = f"test/{uuid.uuid4().hex[:8]}/moa"
        self.inventory = parse_inventory(cycle_inventory(tls, self.ports, self.root, host, **mesh))
        self.report = provision(self.inventory, out, layout_for=in_place_layout)
        self.tree = self.report.tree
        self.brokers: dict[str, MosquittoProcess] = {}
        self.passwords = PasswordStore(out / "secrets" / "passwords")

    def start(self) -> ProvisionedMesh:
        try:
            # parents before children, so no bridge waits for its first retry (2-6 s)
            order = [self.tree.root] + sorted(self.tree.parent, key=self._depth)
            for board in order:
                conf = (self.out / "boards" / board / "mosquitto" / "mosquitto.conf").read_text()
                self.brokers[board] = MosquittoProcess(port=self.ports[board], bind=self.host, conf_text=conf).start()
        except BaseException:
            self.stop()
            raise
        return self

    def _depth(self, board: str) -> int:
        depth = 0
        while board in self.tree.parent:
            board, depth = self.tree.parent[board], depth + 1
        return depth

    def stop(self) -> None:
        for broker in self.brokers.values():
            broker.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{broker.log()[-3000:]}" for name, broker in self.brokers.items())

    def identity(self, name: str) -> Identity:
        if not self.tls:
            return Identity(name, self.passwords.get(name), None, None, None)
        board_dir = self.out / "boards" / name
        if board_dir.exists():
            return Identity(name, self.passwords.get(name), board_dir / "tls" / "ca.crt",
                            board_dir / "tls" / "board.crt", board_dir / "tls" / "board.key")
        user_dir = self.out / "users" / name
        if user_dir.exists():
            return Identity(name, self.passwords.get(name), user_dir / "ca.crt", user_dir / f"{name}.crt",
                            user_dir / f"{name}.key")
        # a bridge: it logs in with its child board's certificate
        child = name.removeprefix("bridge.")
        board_dir = self.out / "boards" / child
        return Identity(name, self.passwords.get(name), board_dir / "tls" / "ca.crt",
                        board_dir / "tls" / "board.crt", board_dir / "tls" / "board.key")

    def client(self, board: str, identity: Identity | None, **overrides) -> TestClient:
        return TestClient(self.host, self.ports[board], identity, **overrides)

    def topic(self, *levels: str) -> str:
        return "/".join((self.root, *levels))


class TestClient:
    """A paho v5 client that records what it receives and how its connection attempt ended."""

    __test__ = False

    def __init__(self, host: str, port: int, identity: Identity | None, *, password: str | None = None,
                 tls: bool | None = None, cert: bool = True, ca: Path | None = None, anonymous: bool = False):
        self.messages: deque[tuple[str, bytes]] = deque()
        self.connected = threading.Event()
        self.finished = threading.Event()
        self.reason: str | None = None
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}",
                                   protocol=paho.MQTTv5)
        if identity is not None and not anonymous:
            self._client.username_pw_set(identity.name, password if password is not None else identity.password)
        use_tls = identity is not None and identity.ca is not None if tls is None else tls
        if use_tls:
            ca_file = ca or (identity.ca if identity else None)
            cert_file = identity.cert if identity and cert else None
            key_file = identity.key if identity and cert else None
            self._client.tls_set(ca_certs=str(ca_file), certfile=cert_file and str(cert_file),
                                 keyfile=key_file and str(key_file), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = lambda *args: self.finished.set()
        self._client.on_disconnect = lambda *args: self.finished.set()
        self._client.on_message = lambda c, u, msg: self.messages.append((msg.topic, msg.payload))
        self._client.on_socket_open = lambda c, u, sock: sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.host, self.port = host, port

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.reason = str(reason_code)
        if not reason_code.is_failure:
            self.connected.set()
        self.finished.set()

    def connect(self, timeout_s: float = 5.0) -> bool:
        """True once the broker accepted us; False if it refused or the TLS handshake failed."""
        try:
            self._client.connect(self.host, self.port, keepalive=15)
        except (OSError, ssl.SSLError) as exc:
            self.reason = f"{type(exc).__name__}: {exc}"
            return False
        self._client.loop_start()
        self.finished.wait(timeout_s)
        if not self.connected.is_set():
            self._client.loop_stop()
            self.reason = self.reason or "no CONNACK (connection closed)"
            return False
        return True

    def subscribe(self, topic: str, timeout_s: float = 5.0) -> None:
        done = threading.Event()
        self._client.on_subscribe = lambda *args: done.set()
        self._client.subscribe(topic, qos=1)
        assert done.wait(timeout_s), f"no SUBACK for {topic}"

    def publish(self, topic: str, payload: bytes | str, retain: bool = False, timeout_s: float = 5.0) -> None:
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout_s)

    def received(self, topic_prefix: str = "") -> list[tuple[str, bytes]]:
        return [m for m in list(self.messages) if m[0].startswith(topic_prefix)]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def wait_until(predicate, timeout_s: float, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


class AgentProcesses:
    """`python -m edge_agent agent --config <bundle>/agent.toml` per board, stopped with terminate then kill."""

    def __init__(self, mesh: ProvisionedMesh, prefix: list[str] | None = None):
        self.mesh = mesh
        self.prefix = prefix or []
        self.procs: dict[str, subprocess.Popen] = {}
        self.log_paths: dict[str, Path] = {}

    def start(self, board: str, command_prefix: list[str] | None = None) -> None:
        bundle = self.mesh.out / "boards" / board
        self.log_paths[board] = bundle / "agent.log"
        with open(self.log_paths[board], "ab") as log:
            self.procs[board] = subprocess.Popen(
                [*(command_prefix or self.prefix), sys.executable, "-m", "edge_agent", "agent", "--config",
                 str(bundle / "agent.toml")], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def stop(self) -> None:
        stop_children(self.procs.values())

    def logs(self) -> str:
        return "\n".join(f"--- agent {b}\n{p.read_text(errors='replace')[-3000:]}" for b, p in self.log_paths.items()
                         if p.exists())
