"""Run a local MQTT broker as a child process (Mosquitto; amqtt as the embedded fallback): tests, demo, experiments."""

from __future__ import annotations

import logging
import shutil
import socket
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..child_process import stop_child
from ..errors import TransportError
from ..resources import data_dir

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def render_local_conf(port: int, bind: str = "127.0.0.1") -> str:
    template = string.Template((data_dir("broker") / "local.conf").read_text())
    return template.substitute(port=port, bind=bind)


def wait_for_port(host: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TransportError(f"nothing accepts connections on {host}:{port} after {timeout_s}s") from None
            time.sleep(0.05)


class BrokerProcess:
    """A broker child process on a free port: `with MosquittoProcess() as broker: broker.port`."""

    name = "broker"
    protocol = "v5"  # the newest MQTT version the broker speaks

    def __init__(self, port: int | None = None, bind: str = "127.0.0.1", conf_text: str | None = None):
        self.host = bind
        self.port = port or free_port(bind)
        self._dir = Path(tempfile.mkdtemp(prefix="edge-moa-broker-"))
        self.conf_path = self._dir / self.conf_name
        self.conf_path.write_text(conf_text or self.render_conf())
        self.log_path = self._dir / "broker.log"
        self._proc: subprocess.Popen | None = None

    conf_name = "broker.conf"

    def render_conf(self) -> str:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout_s: float = 10.0) -> BrokerProcess:
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115  # closed in stop()
        self._proc = subprocess.Popen(self.command(), stdout=self._log_file, stderr=subprocess.STDOUT)
        try:
            wait_for_port(self.host, self.port, timeout_s)
        except TransportError:
            self.stop()
            raise TransportError(f"{self.name} did not start; its log:\n{self.log()}") from None
        log.info("%s listening on %s:%d", self.name, self.host, self.port)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self._proc:
            stop_child(self._proc, grace_s=5.0)
        if getattr(self, "_log_file", None):
            self._log_file.close()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self) -> BrokerProcess:  # noqa: PYI034  # py3.10: no typing.Self
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class MosquittoProcess(BrokerProcess):
    name = "Mosquitto"
    conf_name = "mosquitto.conf"

    def __init__(self, port: int | None = None, bind: str = "127.0.0.1", conf_text: str | None = None):
        self.executable = mosquitto_executable()
        if not self.executable:
            raise TransportError("mosquitto is not installed: `apt-get install mosquitto` (make test does it as root)")
        super().__init__(port, bind, conf_text)

    def render_conf(self) -> str:
        return render_local_conf(self.port, self.host)

    def command(self) -> list[str]:
        return [self.executable, "-c", str(self.conf_path)]


class AmqttProcess(BrokerProcess):
    """amqtt, a pure-Python broker: starts anywhere pip works, but speaks MQTT 3.1.1 only."""

    name = "amqtt (embedded Python broker, MQTT 3.1.1 only)"
    protocol = "v311"
    conf_name = "amqtt.yaml"

    def render_conf(self) -> str:
        return (f"listeners:\n  default:\n    type: tcp\n    bind: {self.host}:{self.port}\n"
                "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n")

    def command(self) -> list[str]:
        script = Path(sys.executable).parent / "amqtt"
        if not script.exists():
            raise TransportError("amqtt is not installed: pip install 'edge-moa[embedded-broker]'")
        return [str(script), "-c", str(self.conf_path)]


def mosquitto_executable() -> str | None:
    return shutil.which("mosquitto") or _sbin("mosquitto")


def local_broker(port: int | None = None) -> BrokerProcess:
    """Mosquitto when installed, else the embedded amqtt broker; a clear error when neither is there."""
    if mosquitto_executable():
        return MosquittoProcess(port=port)
    if (Path(sys.executable).parent / "amqtt").exists():
        return AmqttProcess(port=port)
    raise TransportError("no MQTT broker: install Mosquitto (`apt-get install mosquitto`) "
                         "or the embedded one (`pip install 'edge-moa[embedded-broker]'`)")


def _sbin(name: str) -> str | None:
    for folder in ("/usr/sbin", "/usr/local/sbin"):
        candidate = Path(folder) / name
        if candidate.exists():
            return str(candidate)
    return None
