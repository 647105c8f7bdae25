"""`edge-moa demo`: the newcomer's first command, on the tiny model (the default model is covered elsewhere)."""

import json
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow


def test_demo_prints_answers_with_their_proposers(tiny_model_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "edge_agent", "demo", "--agents", "3", "--model", str(tiny_model_dir),
         "--max-new-tokens", "8", "--workdir", str(tmp_path), "Hello?", "Why?"],
        capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "broker:  Mosquitto on 127.0.0.1:" in out
    assert out.count("answer (") == 2 and out.count("layer 1 propose: ") == 2
    assert out.count("layer 2 aggregate: ") == 2


def test_demo_runs_a_mixed_mesh_one_model_per_agent(tiny_model_dir, tiny_eos_model_dir, tmp_path):
    """`--models`: each agent loads its own model (its config says which), and both answer within a prompt."""
    import tomllib

    result = subprocess.run(
        [sys.executable, "-m", "edge_agent", "demo", "--models", f"{tiny_model_dir},{tiny_eos_model_dir}", "-k", "1",
         "--aggregation", "select", "--max-new-tokens", "6", "--workdir", str(tmp_path), "Hello?"],
        capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert f"agent1 {tiny_model_dir.name}, agent2 {tiny_eos_model_dir.name}" in out
    assert "agents:  2 processes" in out
    propose = next(line for line in out.splitlines() if "layer 1 propose: " in line)
    assert "agent1" in propose and "agent2" in propose
    assert "layer 2 select: " in out
    models = [tomllib.loads((tmp_path / d / "agent.toml").read_text())["engine"]["model"] for d in ("agent1", "agent2")]
    assert models == [str(tiny_model_dir), str(tiny_eos_model_dir)]


def serve_demo(model_dir, workdir) -> tuple[subprocess.Popen, str]:
    """`edge-moa demo --serve` with two agents; returns the process and its broker address once the mesh is up."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "demo", "--agents", "2", "--model", str(model_dir), "-k", "1",
         "--max-new-tokens", "4", "--workdir", str(workdir), "--serve", "Hi"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("mesh is up: broker "):
            return proc, line.split("broker ", 1)[1].split(",")[0]
    proc.kill()
    raise AssertionError("demo --serve never said where its broker is")


def test_demo_serve_keeps_the_mesh_up_for_other_clients(tiny_model_dir, tmp_path):
    proc, address = serve_demo(tiny_model_dir, tmp_path)
    try:
        asked = subprocess.run([sys.executable, "-m", "edge_agent", "ask", "--broker", address, "--device", "agent2",
                                "--json", "-M", "1", "-k", "1", "Are you there?"],
                               capture_output=True, text=True, timeout=60, check=False)
        answer = json.loads(asked.stdout)
        assert answer["device"] == "agent2" and answer["inferences"] == 3
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    assert proc.returncode == 0


def test_demo_serve_stopped_by_sigterm_leaves_no_process_behind(tiny_model_dir, tmp_path):
    import psutil

    proc, _ = serve_demo(tiny_model_dir, tmp_path)
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 3  # the broker and two agents
    finally:
        proc.send_signal(signal.SIGTERM)  # as `timeout`, systemd or a test harness stops it
        proc.wait(30)
    _, alive = psutil.wait_procs(children, timeout=15)
    assert alive == [], f"left running after SIGTERM: {[p.pid for p in alive]}"
