"""Qwen2.5-Coder-0.5B- and 1.5B-Instruct built from their PyPI GGUF parts (`edge-moa model build NAME`, part of
`make test-models`): the catalogue's second and third chat models, the ones mixed meshes and `select` lean on
(slow)."""

from pathlib import Path

import pytest

from edge_agent.artifact.manifest import read_manifest
from edge_agent.engine.base import ChatMessage, GenerationRequest
from edge_agent.engine.onnx import OnnxEngine
from edge_agent.model.build import verify_model
from tests.model_fixtures import assert_tokenizes_as_llama_cpp, built_model_dir

pytestmark = pytest.mark.slow
IM_START, IM_END = 151644, 151645
LAYERS_AND_HEAD_DIM = {"qwen2.5-coder-0.5b-instruct": (24, 64), "qwen2.5-coder-1.5b-instruct": (28, 128)}


@pytest.fixture(scope="module", params=sorted(LAYERS_AND_HEAD_DIM))
def model_dir(request) -> Path:
    return built_model_dir(request.param)


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> OnnxEngine:
    return OnnxEngine(model_dir, threads=2, seed=0)


def test_manifest_and_hashes(model_dir: Path):
    manifest = read_manifest(model_dir)
    assert manifest.eos_token == "<|im_end|>" and manifest.eos_token_ids == (IM_END,)
    layers, head_dim = LAYERS_AND_HEAD_DIM[model_dir.name]
    assert manifest.kv_bytes_per_token == layers * 2 * 2 * head_dim * 4  # K and V, 2 KV heads, fp32
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
