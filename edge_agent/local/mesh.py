"""A local mesh on one machine: one broker (or a bridged tree of them) and n agent processes. For the demo,
experiments and tests."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tomli_w
import tomllib

from ..child_process import stop_child, stop_children
from ..config import parse_config
from ..errors import TransportError
from ..mqtt.broker_process import BrokerProcess, free_port, local_broker
from ..mqtt.client import MoaClient
from ..mqtt.transport import BrokerSettings

log = logging.getLogger(__name__)


def _toml_ready(sections: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What tomli-w can write: None means "leave the key out" (the default applies), a Path is its text."""
    return {name: {key: str(value) if isinstance(value, Path) else value for key, value in values.items()
                   if value is not None} for name, values in sections.items()}


class LocalMesh:
    """`with LocalMesh(4, engine={...}) as mesh: mesh.client().ask("agent1", "hi")`.

    Agents are real `edge-moa agent` processes; `kill` sends SIGKILL (no clean goodbye, the will fires).
    """

    def __init__(self, n: int = 4, *, engine: dict | None = None, moa: dict | None = None,
                 queue: dict | None = None, agent: dict | None = None, topic_root: str = "moa/v1",
                 workdir: Path | None = None, broker: BrokerProcess | None = None, log_level: str = "-v",
                 engine_per_agent: dict[str, dict] | None = None, metrics: bool = False,
                 home_assistant: dict | None = None, brokers: list[BrokerProcess] | None = None):
        self.devices = [f"agent{i}" for i in range(1, n + 1)]
        self.topic_root = topic_root
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="edge-moa-mesh-"))
        self._sections = {"engine": engine or {}, "moa": moa or {}, "queue": queue or {}, "agent": agent or {}}
        self._engine_per_agent = engine_per_agent or {}  # e.g. mixed speeds: {"agent4": {"synthetic_service_s": 2}}
        # `brokers` (started by the caller, e.g. a BrokerTree): agent i joins brokers[i % len]; clients use the first
        self._brokers = list(brokers or [])
        self._own_broker = broker is None and not self._brokers
        self.broker = broker or (self._brokers[0] if self._brokers else local_broker())
        self._procs: dict[str, subprocess.Popen] = {}
        self._log_level = log_level
        # Prometheus endpoints: one free port per agent, so `metrics_url(device)` is known before it starts.
        self.metrics_ports = {d: free_port() for d in self.devices} if metrics else {}
        self._home_assistant = home_assistant

    # -- lifecycle --
    def start(self, timeout_s: float = 120.0) -> LocalMesh:
        if self._own_broker:
            self.broker.start()
        for device in self.devices:
            self.start_agent(device)
        self.wait_online(self.devices, timeout_s)
        return self

    def config_path(self, device: str) -> Path:
        return self.workdir / device / "agent.toml"

    def broker_of(self, device: str) -> BrokerProcess:
        if not self._brokers:
            return self.broker
        return self._brokers[self.devices.index(device) % len(self._brokers)]

    def write_config(self, device: str) -> Path:
        broker = self.broker_of(device)
        sections = {
            "agent": {"device_id": device, "state_dir": str(self.workdir / device / "state"), "heartbeat_s": 1.0,
                      "peer_timeout_s": 5.0, **self._sections["agent"]},
            "mqtt": {"host": broker.host, "port": broker.port, "topic_root": self.topic_root,
                     "protocol": broker.protocol},
            "moa": self._sections["moa"], "queue": self._sections["queue"],
            "engine": {**self._sections["engine"], **self._engine_per_agent.get(device, {})},
        }
        if device in self.metrics_ports:
            sections["metrics"] = {"enabled": True, "host": "127.0.0.1", "port": self.metrics_ports[device]}
        if self._home_assistant is not None:
            sections["home_assistant"] = {"enabled": True, **self._home_assistant}
        text = tomli_w.dumps(_toml_ready(sections))
        parse_config(tomllib.loads(text))  # fail here, not in a child process
        path = self.config_path(device)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def start_agent(self, device: str) -> None:
        path = self.config_path(device) if self.config_path(device).exists() else self.write_config(device)
        log_file = open(self.workdir / device / "agent.log", "ab")  # noqa: SIM115  # the child's stdout
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._procs[device] = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", self._log_level, "agent", "--config", str(path)],
            stdout=log_file, stderr=subprocess.STDOUT, env=env,
        )
        log_file.close()

    def kill(self, device: str) -> None:
        proc = self._procs.pop(device)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop_agent(self, device: str) -> None:
        proc = self._procs.pop(device, None)
        if proc:
            stop_child(proc)

    def stop(self) -> None:
        procs, self._procs = list(self._procs.values()), {}
        stop_children(procs)  # side by side: one grace period for the mesh, not one per agent
        if self._own_broker:
            self.broker.stop()

    def __enter__(self) -> LocalMesh:  # noqa: PYI034  # py3.10: no typing.Self
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- use --
    def settings(self, broker: BrokerProcess | None = None) -> BrokerSettings:
        broker = broker or self.broker
        return BrokerSettings(host=broker.host, port=broker.port, protocol=broker.protocol)

    def client(self, broker: BrokerProcess | None = None) -> MoaClient:
        return MoaClient(self.settings(broker), topic_root=self.topic_root).connect()

    def pids(self) -> dict[str, int]:
        return {device: proc.pid for device, proc in self._procs.items()}

    def metrics_url(self, device: str) -> str | None:
        port = self.metrics_ports.get(device)
        return f"http://127.0.0.1:{port}/metrics" if port else None

    def agent_log(self, device: str) -> str:
        path = self.workdir / device / "agent.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_online(self, devices: list[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with self.client() as client:
            client.watch_status()
            while time.monotonic() < deadline:
                for device in devices:
                    proc = self._procs.get(device)
                    if proc is not None and proc.poll() is not None:
                        raise TransportError(f"agent {device} exited with {proc.returncode}:\n"
                                             + self.agent_log(device)[-3000:])
                statuses = client.statuses()
                # fresh: sent within two of its own intervals (a large mesh slows its heartbeats)
                if all(d in statuses and statuses[d].online and statuses[d].sent_at
                       and statuses[d].sent_at > time.time() - max(3.0, 2 * (statuses[d].heartbeat_s or 0))
                       for d in devices):
                    return
                time.sleep(0.1)
        raise TransportError(f"agents {devices} not online within {timeout_s:.0f}s; last log of {devices[0]}:\n"
                             + self.agent_log(devices[0])[-3000:])
