"""The `edge-moa` commands a newcomer types, run as real processes against a real mesh."""

import json
import subprocess
import sys
import uuid

import pytest

from edge_agent.local.mesh import LocalMesh

pytestmark = pytest.mark.slow


def edge_moa(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "edge_agent", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture(scope="module")
def mesh(tiny_model_dir):
    with LocalMesh(3, engine={"model": str(tiny_model_dir), "threads": 1}, moa={"max_new_tokens": 8},
                   topic_root=f"test/{uuid.uuid4().hex[:8]}") as mesh:
        yield mesh


def test_config_check_reports_key_path_value_and_message(tmp_path):
    bad = tmp_path / "agent.toml"
    bad.write_text('[agent]\ndevice_id = "no spaces allowed"\n[mqtt]\nport = 0\n[engine]\nkind = "gpu"\n')
    result = edge_moa("config", "check", str(bad))
    assert result.returncode == 1
    assert "agent.device_id = 'no spaces allowed': must match" in result.stderr
    assert "mqtt.port = 0" in result.stderr and "engine.kind = 'gpu'" in result.stderr
    good = tmp_path / "good.toml"
    good.write_text('[agent]\ndevice_id = "board-1"\n')
    ok = edge_moa("config", "check", str(good))
    assert ok.returncode == 0 and "OK" in ok.stdout
    missing = edge_moa("config", "check", str(tmp_path / "nope.toml"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr


def test_ask_prints_the_answer_and_json_trace(mesh):
    broker = ["--broker", mesh.broker.address, "--topic-root", mesh.topic_root]
    plain = edge_moa("ask", *broker, "--device", "agent1", "-M", "1", "-k", "1", "Hello?")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.strip()
    full = edge_moa("ask", *broker, "--device", "agent1", "-M", "1", "-k", "2", "--json", "Hello?")
    answer = json.loads(full.stdout)
    assert answer["inferences"] == 4 and len(answer["trace"]) == 2


def test_ask_reports_errors_and_unreachable_brokers(mesh):
    broker = ["--broker", mesh.broker.address, "--topic-root", mesh.topic_root]
    refused = edge_moa("ask", *broker, "--device", "agent1", "-M", "7", "Hello?")
    assert refused.returncode == 1 and "invalid_request" in refused.stderr and "layers 7" in refused.stderr
    nobody = edge_moa("ask", "--broker", "127.0.0.1:1", "--device", "agent1", "Hello?")
    assert nobody.returncode == 1 and "cannot reach broker 127.0.0.1:1" in nobody.stderr
    silent = edge_moa("ask", *broker, "--device", "ghost", "--timeout", "1", "Hello?")
    assert silent.returncode == 1 and "no answer from ghost within 1s" in silent.stderr


def test_status_once_json_lists_every_agent(mesh):
    result = edge_moa("status", "--broker", mesh.broker.address, "--topic-root", mesh.topic_root, "--once", "--json")
    table = json.loads(result.stdout)
    assert sorted(table) == ["agent1", "agent2", "agent3"]
    for status in table.values():
        assert status["online"] and status["model_id"] and status["queue_cap_bytes"] > 0
        assert status["memory_available_bytes"] > 0 and "queue_length" in status
    text = edge_moa("status", "--broker", mesh.broker.address, "--topic-root", mesh.topic_root, "--once")
    assert "agent2" in text.stdout and "yes" in text.stdout


def test_model_verify_says_what_is_wrong_with_its_argument(tmp_path, tiny_model_dir):
    missing = edge_moa("model", "verify", str(tmp_path / "nowhere"))
    assert missing.returncode == 1
    assert "nowhere: not a built model directory" in missing.stderr and "engine.model" not in missing.stderr
    assert edge_moa("model", "verify", str(tiny_model_dir)).stdout.strip().endswith(": ok")


def test_model_list_says_which_builds_only_run_here(default_model_dir):
    from edge_agent.artifact.manifest import read_manifest

    result = edge_moa("model", "list")
    assert result.returncode == 0
    line = next(line for line in result.stdout.splitlines() if line.startswith("smollm2-135m-instruct "))
    form = "tuned to this machine's onnxruntime" if read_manifest(default_model_dir).block_offsets else "portable"
    assert f"built int4 ({form})" in line and str(default_model_dir) in line
