"""Run a real Mosquitto broker as a child process: for tests, the demo and experiments."""

from __future__ import annotations

import logging
import shutil
import socket
import string
import subprocess
import tempfile
import time
from pathlib import Path

from .errors import TransportError

log = logging.getLogger(__name__)
TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "broker"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def render_local_conf(port: int, bind: str = "127.0.0.1") -> str:
    template = string.Template((TEMPLATE_DIR / "local.conf").read_text())
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


class MosquittoProcess:
    """A Mosquitto child process on a free port; `with MosquittoProcess() as broker: broker.port`."""

    def __init__(self, port: int | None = None, bind: str = "127.0.0.1", conf_text: str | None = None):
        self.executable = shutil.which("mosquitto") or _sbin("mosquitto")
        if not self.executable:
            raise TransportError("mosquitto is not installed: `apt-get install mosquitto` (make test does it as root)")
        self.host = bind
        self.port = port or free_port(bind)
        self._dir = Path(tempfile.mkdtemp(prefix="edge-moa-broker-"))
        self.conf_path = self._dir / "mosquitto.conf"
        self.conf_path.write_text(conf_text or render_local_conf(self.port, bind))
        self.log_path = self._dir / "mosquitto.log"
        self._proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 10.0) -> "MosquittoProcess":
        self._log_file = open(self.log_path, "wb")
        self._proc = subprocess.Popen(
            [self.executable, "-c", str(self.conf_path)], stdout=self._log_file, stderr=subprocess.STDOUT
        )
        try:
            wait_for_port(self.host, self.port, timeout_s)
        except TransportError:
            self.stop()
            raise TransportError(f"mosquitto did not start; its log:\n{self.log()}") from None
        log.info("mosquitto listening on %s:%d", self.host, self.port)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        if getattr(self, "_log_file", None):
            self._log_file.close()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self) -> "MosquittoProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _sbin(name: str) -> str | None:
    for folder in ("/usr/sbin", "/usr/local/sbin"):
        candidate = Path(folder) / name
        if candidate.exists():
            return str(candidate)
    return None
