"""The real default model (SmolLM2-135M-Instruct, int4 ONNX) answering through a 3-agent MoA."""

import uuid

import pytest

from edge_agent.local.mesh import LocalMesh

pytestmark = pytest.mark.slow


def test_default_model_mesh_gives_a_real_answer(default_model_dir):
    with LocalMesh(3, engine={"model": str(default_model_dir), "threads": 1}, moa={"max_new_tokens": 48},
                   topic_root=f"test/{uuid.uuid4().hex[:8]}") as mesh, mesh.client() as client:
        answer = client.ask("agent1", "What is the capital of France? Answer in one sentence.", layers=1,
                            proposers=2, temperature=0.0, timeout_s=300)
    assert "error" not in answer, answer
    assert "Paris" in answer["response"]
    assert answer["inferences"] == 4
    assert sorted(e["device"] for e in answer["trace"][0]["answered"]) == ["agent1", "agent2", "agent3"]
