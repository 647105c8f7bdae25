"""The real default model (SmolLM2-135M-Instruct int4), when built: `edge-moa model build smollm2-135m-instruct`."""

from pathlib import Path

import pytest

from edge_agent.engine.base import ChatMessage, GenerationRequest
from edge_agent.engine.onnx import OnnxEngine
from edge_agent.model.build import verify_model
from edge_agent.model.manifest import read_manifest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(default_model_dir: Path) -> OnnxEngine:
    engine = OnnxEngine(default_model_dir, threads=2, seed=0)
    engine.warm_up()
    return engine


def test_manifest_and_hashes(default_model_dir: Path):
    manifest = read_manifest(default_model_dir)
    assert manifest.kv_bytes_per_token == 30 * 2 * 3 * 64 * 4
    assert manifest.eos_token == "<|im_end|>" and manifest.bos_token is None
    assert verify_model(default_model_dir, load=False) == []


def test_answers_a_factual_question_greedily(engine: OnnxEngine):
    question = "What is the capital of France? Answer in one short sentence."
    request = GenerationRequest(messages=(ChatMessage("user", question),), max_new_tokens=64, temperature=0)
    result = engine.generate(request)
    assert "Paris" in result.text
    assert result.new_tokens < 64  # stopped at <|im_end|>, not at the budget
    assert engine.generate(request).text == result.text


def test_no_bos_and_im_end_is_one_token(engine: OnnxEngine):
    ids = engine.encode(engine.render_prompt((ChatMessage("user", "Hi"),)))
    assert ids[0] == 1  # <|im_start|> from the template itself, no BOS before it
    assert ids.count(2) == 2  # <|im_end|> closes the default system turn and the user turn
    assert engine.decode(engine.encode("Straße naïve — 3.14")) == "Straße naïve — 3.14"


def test_matches_llama_cpp_tokenization(engine: OnnxEngine, default_model_dir: Path):
    llama_cpp = pytest.importorskip("llama_cpp")
    gguf = next(default_model_dir.parent.glob(f".{default_model_dir.name}.work/*.gguf"), None)
    if gguf is None:
        pytest.skip("the source GGUF is not kept beside the built model")
    llama = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    for text in (
        "Hello world",
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n",
        "  spaces\tand\nnewlines ",
        "Ünïcödé, emoji 🙂 and code: def f(x): return x**2",
    ):
        assert engine.encode(text) == llama.tokenize(text.encode(), add_bos=False, special=True), text
