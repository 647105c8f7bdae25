"""MQTT 3.1.1 end to end: no Response Topic property, so replies follow `reply_to` in the payload."""

import uuid

import pytest

from edge_agent.local.mesh import LocalMesh
from edge_agent.mqtt.broker_process import AmqttProcess

pytestmark = pytest.mark.slow


def test_agents_answer_over_the_embedded_amqtt_broker(tiny_model_dir):
    with AmqttProcess() as broker:
        mesh = LocalMesh(3, engine={"model": str(tiny_model_dir), "threads": 1}, moa={"max_new_tokens": 8},
                         broker=broker, topic_root=f"test/{uuid.uuid4().hex[:8]}")
        with mesh, mesh.client() as client:
            answer = client.ask("agent1", "Hello over 3.1.1", layers=1, proposers=2, timeout_s=60)
    assert "error" not in answer, answer
    assert answer["inferences"] == 4
    assert sorted(e["device"] for e in answer["trace"][0]["answered"]) == ["agent1", "agent2", "agent3"]
