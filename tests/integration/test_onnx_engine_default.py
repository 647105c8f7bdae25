"""The real default model (SmolLM2-135M-Instruct int4), when built: `edge-moa model build smollm2-135m-instruct`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.artifact.manifest import read_manifest
from edge_agent.engine.base import ChatMessage, GenerationRequest
from edge_agent.engine.onnx import OnnxEngine
from edge_agent.model.build import verify_model
from tests.model_fixtures import assert_tokenizes_as_llama_cpp

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
    assert_tokenizes_as_llama_cpp(engine, default_model_dir, (
        "Hello world",
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n",
        "  spaces\tand\nnewlines ",
        "Ünïcödé, emoji 🙂 and code: def f(x): return x**2",
    ))


_LOAD_AND_ANSWER = """
import json, sys
from pathlib import Path
from edge_agent.engine.base import ChatMessage
from edge_agent.engine.onnx import OnnxEngine
engine = OnnxEngine(sys.argv[1], threads=1, huge_pages=sys.argv[2] == "1")
rollup = Path("/proc/self/smaps_rollup").read_text().splitlines()
huge_kb = int(next(x for x in rollup if x.startswith("AnonHuge")).split()[1])
prompt = (ChatMessage("user", "What is the capital of France? Answer in one short sentence."),)
ids = engine.generate_ids(engine.encode(engine.render_prompt(prompt)), max_new_tokens=24)
print(json.dumps({"huge_kb": huge_kb, "ids": ids}))
"""


def _load_and_answer(model_dir: Path, huge_pages: bool) -> dict:
    """In a fresh process: what one engine's own loading put on huge pages, and its greedy answer."""
    done = subprocess.run(
        [sys.executable, "-c", _LOAD_AND_ANSWER, str(model_dir), "1" if huge_pages else "0"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    not Path("/sys/kernel/mm/transparent_hugepage/enabled").is_file()
    or "[never]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text(),
    reason="no transparent huge pages on this kernel",
)
def test_weights_move_to_huge_pages_and_answers_stay_the_same(default_model_dir: Path):
    small, huge = (_load_and_answer(default_model_dir, flag) for flag in (False, True))
    assert huge["huge_kb"] - small["huge_kb"] >= 50 * 1024  # most of the ~100 MB of prepacked weights
    assert huge["ids"] == small["ids"] and len(huge["ids"]) > 3
