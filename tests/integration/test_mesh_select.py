"""`aggregation = select` end to end: real agent processes with the tiny ONNX model on a real Mosquitto. The answer
is one layer-1 proposal verbatim, ranked by the origin's real next-token probabilities."""

import math
import uuid

import pytest

from edge_agent.local.mesh import LocalMesh
from edge_agent.mqtt.broker_process import MosquittoProcess

pytestmark = pytest.mark.slow
TEMPLATE = ("<|im_start|>system\nYou compare two answers.\n<|im_end|>\n<|im_start|>user\n{instruction}\n"
            "m: {output_1}\nM: {output_2}\nBetter:\n<|im_end|>")
PROMPT = "Tell me about the sea."


@pytest.fixture(scope="module")
def select_mesh(tiny_model_dir, tiny_eos_model_dir, tmp_path_factory):
    template = tmp_path_factory.mktemp("judge") / "alpaca_eval_clf.txt"
    template.write_text(TEMPLATE)
    with MosquittoProcess() as broker:
        # agent3's model always answers "" at once: the proposals differ, so which one is picked matters
        mesh = LocalMesh(3, engine={"model": str(tiny_model_dir), "threads": 1},
                         engine_per_agent={"agent3": {"model": str(tiny_eos_model_dir)}},
                         moa={"max_new_tokens": 8, "aggregation": "select", "temperature": 0.0,
                              "pairwise_template_file": str(template)},
                         topic_root=f"test/{uuid.uuid4().hex[:8]}", broker=broker)
        with mesh:
            yield mesh


def alone(client, device: str) -> str:
    answer = client.ask(device, PROMPT, layers=0, timeout_s=60)
    assert "error" not in answer, answer
    return answer["response"]


@pytest.mark.parametrize("ranker", ["pointwise", "pairwise"])
def test_select_answers_with_one_layer_one_proposal_verbatim(select_mesh, ranker):
    with select_mesh.client() as client:
        answer = client.ask("agent1", PROMPT, layers=1, proposers=2, select_ranker=ranker, timeout_s=90)
        assert "error" not in answer, answer
        proposals, step = answer["trace"][0]["answered"], answer["trace"][-1]
        assert {e["device"] for e in proposals} == {"agent1", "agent2", "agent3"}
        # greedy: each board's proposal is what it answers alone
        texts = [alone(client, e["device"]) for e in proposals]
    assert step["kind"] == "select" and step["ranker"] == ranker and len(step["scores"]) == 3
    assert answer["response"] == texts[step["picked"]] and answer["response"] in texts
    assert step["answered"][0]["device"] == "agent1" and step["answered"][0]["new_tokens"] == 0
    assert step["answered"][0]["inference_s"] > 0 and step["answered"][0]["prompt_tokens"] > 0
    assert all(math.isfinite(s) for s in step["scores"])
    if ranker == "pointwise":  # expected digits under real probabilities
        assert all(1.0 <= s <= 9.0 for s in step["scores"])
    else:  # mean order-averaged preferences (the two equal proposals are never played against each other)
        assert all(0.0 <= s <= 1.0 for s in step["scores"])
    assert answer["usage"]["completion_tokens"] == proposals[step["picked"]]["new_tokens"]
    assert answer["usage"]["ranking_prompt_tokens"] == step["answered"][0]["prompt_tokens"]
    assert answer["inferences"] == 4


def test_synthesize_per_request_and_a_capped_reference(select_mesh):
    with select_mesh.client() as client:
        answer = client.ask("agent2", PROMPT, layers=1, proposers=1, aggregation="synthesize",
                            reference_max_chars=5, timeout_s=90)
    assert "error" not in answer, answer
    assert answer["trace"][-1]["kind"] == "aggregate" and answer["inferences"] == 3


def test_an_unknown_aggregation_is_refused_to_its_sender(select_mesh):
    with select_mesh.client() as client:
        answer = client.ask("agent3", PROMPT, aggregation="vote", timeout_s=30)
    assert answer["error"]["code"] == "invalid_request" and "aggregation" in answer["error"]["message"], answer
    assert answer["device"] == "agent3"
