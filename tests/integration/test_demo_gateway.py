"""`edge-moa demo --serve --gateway HOST:PORT`: the mesh page and the OpenAI API of a demo mesh, gone after Ctrl-C."""

import signal
import subprocess
import sys
import time

import openai
import psutil
import pytest

from edge_agent.mqtt.broker_process import free_port

pytestmark = pytest.mark.slow


def test_demo_serves_a_gateway_until_interrupted(tiny_model_dir, tmp_path):
    listen = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "demo", "--agents", "2", "--model", str(tiny_model_dir), "-k", "1",
         "--max-new-tokens", "4", "--workdir", str(tmp_path), "--serve", "--gateway", listen, "Hi"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (lines and lines[-1].startswith("mesh is up: broker ")):
            lines.append(proc.stdout.readline())
        assert f"gateway: http://{listen}/ (mesh page)" in "".join(lines), "".join(lines)
        children = psutil.Process(proc.pid).children(recursive=True)
        client = openai.OpenAI(base_url=f"http://{listen}/v1", api_key="unused", max_retries=0, timeout=60)
        result = client.chat.completions.create(model="moa-M1-k1", messages=[{"role": "user", "content": "Hi"}])
        assert result.model_extra["moa"]["device"] == "agent1" and result.model_extra["moa"]["inferences"] == 3
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    assert proc.returncode == 0
    _, alive = psutil.wait_procs(children, timeout=15)
    assert alive == [], f"left running: {[p.cmdline() for p in alive]}"
