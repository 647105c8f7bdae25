"""Our plain onnxruntime loop against onnxruntime-genai on the same files: greedy tokens must match one for one.

onnxruntime-genai is optional (the `export` extra): skipped where it is not installed. Measured no faster than
our loop on these models (docs/performance.md), so the board needs only onnxruntime. The default model's graph
takes `inputs_embeds` (our engine memory-maps its token table, docs/models.md), which onnxruntime-genai cannot
feed: its build ships no genai_config.json, and the comparison runs on the tiny model.
"""

from pathlib import Path

import pytest

from edge_agent.engine.base import ChatMessage
from edge_agent.engine.onnx import OnnxEngine

og = pytest.importorskip("onnxruntime_genai")

MESSAGES = (ChatMessage("user", "What is the capital of France? Answer in one short sentence."),)


def _genai_greedy(model_dir: Path, prompt: list[int], max_new_tokens: int) -> list[int]:
    model = og.Model(str(model_dir))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + max_new_tokens, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    out = []
    while not generator.is_done():
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
    return out


def _compare(model_dir: Path, max_new_tokens: int) -> None:
    engine = OnnxEngine(model_dir, threads=1)
    prompt = engine.encode(engine.render_prompt(MESSAGES))
    ours = engine.generate_ids(prompt, max_new_tokens=max_new_tokens, temperature=0)
    theirs = _genai_greedy(model_dir, prompt, max_new_tokens)
    if theirs and theirs[-1] in engine.manifest.eos_token_ids:
        theirs = theirs[:-1]  # genai returns the EOS token, we do not
    assert ours == theirs


def test_tiny_model_greedy_matches_genai(tiny_model_dir: Path):
    _compare(tiny_model_dir, 40)
