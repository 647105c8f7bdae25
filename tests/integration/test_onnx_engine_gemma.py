"""Gemma 3 270M (base model, completion template), when built: `edge-moa model build gemma3-270m` (slow)."""

import pytest

from edge_agent.engine.base import ChatMessage, GenerationRequest
from edge_agent.engine.onnx import OnnxEngine
from tests.model_fixtures import built_model_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine() -> OnnxEngine:
    return OnnxEngine(built_model_dir("gemma3-270m"), threads=2)


def test_completion_template_and_answer(engine: OnnxEngine):
    assert engine.manifest.template_kind == "completion"
    messages = (ChatMessage("user", "What is the capital of France?"),)
    assert engine.render_prompt(messages) == "<bos>Question: What is the capital of France?\nAnswer:"
    assert engine.encode(engine.render_prompt(messages))[0] == 2  # one <bos>, from the template
    result = engine.generate(GenerationRequest(messages=messages, max_new_tokens=12, temperature=0))
    assert "Paris" in result.text
    assert engine.kv_bytes_per_token == 18 * 2 * 1 * 256 * 4


def test_base_model_answer_stops_at_the_next_question(engine: OnnxEngine):
    assert engine.manifest.stop_strings == ("\nQuestion:",)
    messages = (ChatMessage("user", "What is 2 + 2?"),)
    result = engine.generate(GenerationRequest(messages=messages, max_new_tokens=64, temperature=0))
    assert "Question:" not in result.text
