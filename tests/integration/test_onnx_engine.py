"""OnnxEngine on the tiny random model: the real onnxruntime loop, tokenizer and chat template, no mocks."""

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_agent.artifact.manifest import read_manifest
from edge_agent.engine.base import ChatMessage, GenerationRequest
from edge_agent.engine.onnx import OnnxEngine
from edge_agent.errors import InferenceError, TooLargeError

MESSAGES = (ChatMessage("system", "Answer briefly."), ChatMessage("user", "What is the capital of France?"))


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> OnnxEngine:
    engine = OnnxEngine(tiny_model_dir, threads=1, seed=123)
    engine.warm_up()
    yield engine
    engine.close()


def test_geometry_comes_from_the_manifest(engine: OnnxEngine, tiny_model_dir: Path):
    manifest = read_manifest(tiny_model_dir)
    assert engine.model_id == "tiny-random"
    assert engine.context_length == manifest.context_length == 2048
    assert engine.kv_bytes_per_token == 2 * 2 * 2 * 16 * 4


def test_prompt_tokens_match_the_rendered_template(engine: OnnxEngine):
    text = engine.render_prompt(MESSAGES)
    assert text.endswith("<|im_start|>assistant\n")
    ids = engine.encode(text)
    assert engine.count_prompt_tokens(MESSAGES) == len(ids)
    assert (
        ids.count(1) == 3 and ids.count(2) == 2
    )  # <|im_start|> x3 and <|im_end|> x2 are single special tokens
    assert engine.decode(engine.encode("héllo wörld, 2+2=4")) == "héllo wörld, 2+2=4"


def test_greedy_is_deterministic_and_runs_to_max_new_tokens(engine: OnnxEngine):
    request = GenerationRequest(messages=MESSAGES, max_new_tokens=24, temperature=0)
    first, second = engine.generate(request), engine.generate(request)
    assert first.text == second.text and first.text
    assert first.new_tokens == 24
    assert first.prompt_tokens == engine.count_prompt_tokens(MESSAGES)
    assert first.seconds > 0


def test_shared_kv_buffer_matches_the_concat_loop_and_a_full_prefill(tiny_model_dir: Path):
    shared = OnnxEngine(tiny_model_dir, threads=1)
    concat = OnnxEngine(
        tiny_model_dir, threads=1, share_kv_buffer=False
    )  # the path optimum-style graphs take
    prompt = shared.encode(shared.render_prompt(MESSAGES))
    greedy = shared.generate_ids(prompt, max_new_tokens=16)
    assert concat.generate_ids(prompt, max_new_tokens=16) == greedy
    # the cache is right: one prefill over prompt + answer predicts the same greedy tokens
    logits = shared.next_token_logits(prompt + greedy)
    assert list(np.argmax(logits[len(prompt) - 1 : -1], axis=-1)) == greedy


def test_seed_reproduces_sampling_and_different_seeds_differ(engine: OnnxEngine):
    def sample(seed: int) -> str:
        return engine.generate(
            GenerationRequest(messages=MESSAGES, max_new_tokens=32, temperature=1.0, seed=seed)
        ).text

    assert sample(1) == sample(1)
    assert len({sample(s) for s in range(1, 6)}) > 1


def test_engine_seed_makes_a_run_reproducible(tiny_model_dir: Path):
    request = GenerationRequest(messages=MESSAGES, max_new_tokens=16, temperature=1.0)
    runs = [OnnxEngine(tiny_model_dir, threads=1, seed=9).generate(request).text for _ in range(2)]
    assert runs[0] == runs[1]


def test_stops_at_eos(tiny_eos_model_dir: Path):
    engine = OnnxEngine(tiny_eos_model_dir, threads=1)
    result = engine.generate(GenerationRequest(messages=MESSAGES, max_new_tokens=50, temperature=0.7, seed=1))
    assert result.new_tokens == 0 and result.text == ""


def test_too_large_is_raised_not_crashed(engine: OnnxEngine):
    prompt_tokens = engine.count_prompt_tokens(MESSAGES)
    fits = GenerationRequest(
        messages=MESSAGES, max_new_tokens=engine.context_length - prompt_tokens, temperature=0
    )
    too_big = GenerationRequest(messages=MESSAGES, max_new_tokens=fits.max_new_tokens + 1)
    with pytest.raises(TooLargeError) as info:
        engine.generate(too_big)
    assert info.value.code == "too_large"
    long_prompt = (ChatMessage("user", "word " * 5000),)
    with pytest.raises(TooLargeError):
        engine.generate(GenerationRequest(messages=long_prompt, max_new_tokens=1))


def test_fills_the_whole_context(engine: OnnxEngine):
    prompt_tokens = engine.count_prompt_tokens(MESSAGES)
    budget = engine.context_length - prompt_tokens
    result = engine.generate(GenerationRequest(messages=MESSAGES, max_new_tokens=budget, temperature=0))
    assert result.new_tokens == budget


def test_threads_do_not_change_greedy_output(tiny_model_dir: Path, engine: OnnxEngine):
    request = GenerationRequest(messages=MESSAGES, max_new_tokens=16, temperature=0)
    assert OnnxEngine(tiny_model_dir, threads=2).generate(request).text == engine.generate(request).text


def test_broken_model_directories_raise_inference_error(tmp_path: Path, tiny_model_dir: Path):
    with pytest.raises(InferenceError, match="not a built model directory"):
        OnnxEngine(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("manifest.json", "tokenizer.json"):
        (broken / name).write_bytes((tiny_model_dir / name).read_bytes())
    (broken / "model.onnx").write_bytes(b"not an onnx graph")
    with pytest.raises(InferenceError, match="cannot load"):
        OnnxEngine(broken)


def test_stop_strings_cut_the_answer(tmp_path: Path, tiny_model_dir: Path):
    request = GenerationRequest(messages=MESSAGES, max_new_tokens=20, temperature=0)
    full = OnnxEngine(tiny_model_dir, threads=1).generate(request)
    stop = full.text[6:9]
    copy = tmp_path / "stops"
    shutil.copytree(tiny_model_dir, copy)
    manifest = dataclasses.replace(read_manifest(copy), stop_strings=(stop,))
    (copy / "manifest.json").write_text(manifest.to_json())
    cut = OnnxEngine(copy, threads=1).generate(request)
    assert cut.text == full.text.split(stop, 1)[0]
    assert cut.new_tokens < full.new_tokens  # stopped early, not only trimmed


def test_ids_given_with_the_request_are_used_instead_of_tokenizing_again(engine: OnnxEngine):
    messages = (ChatMessage("user", "Tell me about the sea."),)
    ids = tuple(engine.prompt_ids(messages))
    plain = engine.generate(GenerationRequest(messages=messages, max_new_tokens=6, temperature=0.0))
    given = engine.generate(GenerationRequest(messages=messages, max_new_tokens=6, temperature=0.0, prompt_ids=ids))
    assert given.text == plain.text and given.prompt_tokens == len(ids) == engine.count_prompt_tokens(messages)
    other = engine.generate(GenerationRequest(messages=messages, max_new_tokens=6, temperature=0.0,
                                              prompt_ids=tuple(engine.prompt_ids((ChatMessage("user", "Hi"),)))))
    assert other.prompt_tokens != given.prompt_tokens  # the ids, not the messages, were read


def test_score_labels_reads_the_last_position_of_a_chunked_prefill(engine: OnnxEngine):
    """A score job's prefill (chunks of prefill_chunk, last logits only) gives what the full forward gives."""
    messages = (ChatMessage("user", "Rate this answer from 1 to 9. " * 12),)
    ids = engine.prompt_ids(messages)
    assert len(ids) > engine.prefill_chunk  # several chunks
    full = engine.next_token_logits(ids)[-1]
    np.testing.assert_allclose(engine.last_logits(ids), full, rtol=1e-4, atol=1e-4)
    digits = tuple(str(d) for d in range(1, 10))
    scores = engine.score_labels(messages, digits)
    assert scores.prompt_tokens == len(ids) and set(scores.logprobs) == set(digits)
    probabilities = [np.exp(v) for v in scores.logprobs.values()]
    assert all(0.0 < p < 1.0 for p in probabilities) and sum(probabilities) <= 1.0 + 1e-9
