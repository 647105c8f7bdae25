"""A real `edge-moa gateway` process for the tests, and a fake agent (a plain paho client) that streams chunks."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from edge_agent.child_process import stop_child
from edge_agent.mqtt.broker_process import free_port
from tests.integration.mesh_helpers import TestClient


class GatewayProcess:
    """`python -m edge_agent gateway ...` on a free port; `url` once /health answers (200 or 503)."""

    def __init__(self, broker_address: str, device: str, topic_root: str, workdir: Path, *,
                 api_key: str | None = None, extra: list[str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"gateway-{device}-{self.port}.log"
        args = [sys.executable, "-m", "edge_agent", "-v", "gateway", "--broker", broker_address, "--topic-root",
                topic_root, "--device", device, "--listen", f"127.0.0.1:{self.port}", *(extra or [])]
        if api_key:
            key_file = workdir / f"api-key-{self.port}"
            key_file.write_text(api_key + "\n")
            args += ["--api-key-file", str(key_file)]
        self._args = args
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 20.0) -> GatewayProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self._args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
            try:
                urllib.request.urlopen(self.url + "/health", timeout=1).close()
                return self
            except urllib.error.HTTPError:
                return self  # 503: up, but its broker is not
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"gateway not answering within {timeout_s}s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc:
            stop_child(self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def __enter__(self) -> GatewayProcess:  # noqa: PYI034  # py3.10: no typing.Self
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def get_json(url: str, api_key: str | None = None) -> tuple[int, dict, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}"), dict(exc.headers)


class FakeStreamingAgent:
    """Answers prompts on `<root>/<device>/prompt` the way the streaming contract says an agent does.

    `script(prompt_json)` returns the messages to publish on the reply topic, in that order (chunks, answer), with
    numbers for pauses in seconds.
    Only for what the real agent cannot be made to do on demand (out-of-order and duplicated chunks).
    """

    def __init__(self, host: str, port: int, root: str, device: str, script):
        self.topic = f"{root}/{device}/prompt"
        self.device, self.script = device, script
        self.prompts: list[dict] = []
        self._client = TestClient(host, port, None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FakeStreamingAgent:  # noqa: PYI034  # py3.10: no typing.Self
        assert self._client.connect(), self._client.reason
        self._client.subscribe(self.topic)
        self._thread.start()
        return self

    def _serve(self) -> None:
        while not self._stop.is_set():
            while self._client.messages:
                _, payload = self._client.messages.popleft()
                prompt = json.loads(payload)
                self.prompts.append(prompt)
                for message in self.script(prompt):
                    if isinstance(message, (int, float)):  # a pause, in seconds
                        time.sleep(message)
                        continue
                    self._client.publish(prompt["reply_to"], json.dumps(message))
            time.sleep(0.01)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self._client.close()
