"""Four real agent processes with the tiny ONNX model on a real Mosquitto: the MoA end to end."""

import json
import shutil
import subprocess
import uuid

import pytest

from edge_agent.agent.moa import inferences_per_prompt
from edge_agent.mqtt.broker_process import MosquittoProcess
from tests.integration.mesh_helpers import tiny_mesh

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def onnx_mesh(tiny_model_dir):
    with MosquittoProcess() as broker:
        mesh = tiny_mesh(4, tiny_model_dir, broker=broker)
        with mesh:
            yield mesh


@pytest.mark.parametrize("layers,proposers", [(0, 0), (1, 1), (1, 2), (2, 2)])
def test_answer_trace_has_distinct_proposers_and_the_paper_cost(onnx_mesh, layers, proposers):
    with onnx_mesh.client() as client:
        answer = client.ask("agent2", "Tell me about the sea.", layers=layers, proposers=proposers, timeout_s=60)
    assert "error" not in answer, answer
    assert answer["device"] == "agent2" and answer["response"]
    assert answer["inferences"] == inferences_per_prompt(layers, proposers)
    trace = answer["trace"]
    assert len(trace) == layers + 1
    for layer in trace[:-1]:
        devices = [e["device"] for e in layer["answered"]]
        assert devices[0] == "agent2" and len(set(devices)) == proposers + 1
        assert all(e["inference_s"] > 0 for e in layer["answered"])
    assert [e["device"] for e in trace[-1]["answered"]] == ["agent2"]
    assert answer["latency_s"] >= sum(max(e["inference_s"] for e in t["answered"]) for t in trace) * 0.99


def test_synthesis_prompts_start_from_the_prefix_cache_and_the_traces_say_so(onnx_mesh):
    """Each agent keeps the synthesis prompt's start once it has seen it twice; later syntheses, the origin's own
    and a peer's (a layer-2 proposal, whose count comes back in its result message), take it from the cache."""
    with onnx_mesh.client() as client:
        for device in onnx_mesh.devices:  # two syntheses on every agent: the shared start is kept everywhere
            for question in ("Tell me about the sea.", "Tell me about the moon."):
                answer = client.ask(device, question, layers=1, proposers=0, timeout_s=60)
                assert "error" not in answer, answer
        answer = client.ask("agent1", "Tell me about rivers.", layers=2, proposers=1, timeout_s=60)
    assert "error" not in answer, answer
    first, second, final = answer["trace"]
    assert all(not e.get("cached_tokens") for e in first["answered"])  # plain prompts share no whole chunk
    for entry in second["answered"] + final["answered"]:  # agent1's own and a peer's synthesis
        assert 0 < entry["cached_tokens"] < entry["prompt_tokens"] and entry["cached_tokens"] % 64 == 0, entry
    assert {e["device"] for e in second["answered"]} - {"agent1"}


def test_plain_mosquitto_clients_with_a_response_topic(onnx_mesh):
    if not shutil.which("mosquitto_pub"):
        pytest.fail("mosquitto_pub missing: install mosquitto-clients (make test does it)")
    root, broker = onnx_mesh.topic_root, onnx_mesh.broker
    reply = f"apps/{uuid.uuid4().hex[:8]}/reply"
    sub = subprocess.Popen(["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-V", "mqttv5",
                            "-t", reply, "-C", "1", "-W", "60", "-F", "%p"], stdout=subprocess.PIPE, text=True)
    with onnx_mesh.client() as client:  # wait until the subscription is in place
        client.ask("agent1", "warm", layers=0, timeout_s=30)
    subprocess.run(["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-V", "mqttv5",
                    "-t", f"{root}/agent1/prompt", "-m", "What is MQTT?",
                    "-D", "publish", "response-topic", reply,
                    "-D", "publish", "correlation-data", "abc123"], check=True)
    out, _ = sub.communicate(timeout=90)
    answer = json.loads(out)
    assert answer["device"] == "agent1" and answer["response"] and answer["inferences"] == 4


@pytest.mark.parametrize("payload,code,fragment", [
    (b'{"prompt": "x", "layers": 9}', "invalid_request", "layers 9 exceeds"),
    (b'{"prompt": ""}', "invalid_request", "prompt"),
    (b'{"prompt": "x", "proposers": "many"}', "invalid_request", "proposers"),
    (b'{"prompt": "x", "max_new_tokens": 100000}', "invalid_request", "max_new_tokens"),
    (b'{"prompt": "x",', "invalid_request", "not valid JSON"),
    (b"\xff\xfe", "invalid_request", "UTF-8"),
    (b"x" * 70000, "too_large", "exceeds"),
])
def test_malformed_prompts_get_an_error_on_their_response_topic(onnx_mesh, payload, code, fragment):
    from edge_agent.wire.messages import new_id

    with onnx_mesh.client() as client:
        answer = client.submit_raw("agent3", payload, request_id=new_id()[:12]).result(timeout=30)
    assert answer["error"]["code"] == code and fragment in answer["error"]["message"], answer
    assert answer["device"] == "agent3"
    assert "refused" in onnx_mesh.agent_log("agent3")  # and a WARNING in the log


def test_prompt_too_long_for_the_context_gets_too_large(onnx_mesh):
    with onnx_mesh.client() as client:
        answer = client.ask("agent4", "word " * 1590, layers=0, max_new_tokens=500, timeout_s=30)
    assert answer["error"]["code"] == "too_large", answer
