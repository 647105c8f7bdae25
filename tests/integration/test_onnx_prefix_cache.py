"""The prefix cache on a real ONNX model: prompts that share a start skip its prefill and give the same tokens."""

import threading
from pathlib import Path

import numpy as np
import pytest

from edge_agent.engine.base import ChatMessage, Generation, GenerationRequest
from edge_agent.engine.onnx import OnnxEngine
from edge_agent.engine.worker import InferenceWorker, Job

CHUNK = 16
SYSTEM = "You merge the answers below into one better answer. " * 4  # a shared start of several chunks


def synthesis(question: str, max_new_tokens: int = 12, **kwargs) -> GenerationRequest:
    return GenerationRequest(
        messages=(ChatMessage("system", SYSTEM), ChatMessage("user", question)),
        max_new_tokens=max_new_tokens, temperature=0, **kwargs,
    )


QUESTIONS = ["how do brokers bridge?", "why queue prompts?", "what is a layer?", "who aggregates?",
             "and the proposers?"]


@pytest.fixture(scope="module")
def cached(tiny_model_dir: Path) -> OnnxEngine:
    engine = OnnxEngine(tiny_model_dir, threads=1, seed=3, max_batch=4, prefill_chunk=CHUNK)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def uncached(tiny_model_dir: Path) -> OnnxEngine:
    engine = OnnxEngine(tiny_model_dir, threads=1, seed=3, max_batch=4, prefill_chunk=CHUNK, prefix_cache_bytes=0)
    yield engine
    engine.close()


def shared_start(engine: OnnxEngine) -> int:
    """The tokens the synthesis prompts have in common, rounded down to whole chunks."""
    ids = [engine.prompt_ids(synthesis(q).messages) for q in QUESTIONS]
    common = 0
    while all(len(i) > common and i[common] == ids[0][common] for i in ids):
        common += 1
    return common // CHUNK * CHUNK


def test_a_prefix_seen_twice_is_kept_and_later_prompts_skip_it_with_the_same_tokens(cached, uncached):
    cached.prefixes.clear()
    reuse = shared_start(cached)
    assert reuse >= 3 * CHUNK  # the test means something: several chunks are shared
    got = [cached.generate(synthesis(q)) for q in QUESTIONS]
    want = [uncached.generate(synthesis(q)) for q in QUESTIONS]
    assert [(g.text, g.new_tokens) for g in got] == [(w.text, w.new_tokens) for w in want]
    # first sight: hashed; second: kept; from the third on: taken up, the whole shared start
    assert [g.cached_tokens for g in got] == [0, 0, reuse, reuse, reuse]
    assert all(w.cached_tokens == 0 for w in want) and uncached.prefixes is None
    assert cached.prefixes.stats.tokens_reused == 3 * reuse
    assert 0 < cached.prefixes.nbytes <= cached.prefixes.budget_bytes


def test_rows_resumed_in_a_batch_and_seeded_sampled_rows_equal_the_uncached_run(cached, uncached):
    cached.prefixes.clear()
    sampled = GenerationRequest(messages=synthesis("sampled").messages, max_new_tokens=20, temperature=0.9, seed=7)
    requests = [synthesis(q, 20) for q in QUESTIONS] + [sampled]
    cached.generate_batch(requests[:2])  # seen and kept
    got = cached.generate_batch(requests)
    want = uncached.generate_batch(requests)
    assert [(g.text, g.new_tokens) for g in got] == [(w.text, w.new_tokens) for w in want]
    assert all(g.cached_tokens > 0 for g in got)


def test_a_newcomer_resumed_while_others_decode_joins_and_answers_as_uncached(cached, uncached):
    cached.prefixes.clear()
    for q in QUESTIONS[:2]:
        cached.generate(synthesis(q, 2))
    worker = InferenceWorker(cached, max_batch=4)
    results: dict[str, Generation] = {}
    done = threading.Event()
    started = threading.Event()

    def on_done(key):
        def record(outcome):
            results[key] = outcome
            if len(results) == 3:
                done.set()
        return record

    worker.submit(Job("long", GenerationRequest(messages=(ChatMessage("user", "decode a while"),),
                                                max_new_tokens=80, temperature=0), on_done("long"),
                      lambda _d: started.set()))
    assert started.wait(30)
    worker.submit(Job("a", synthesis(QUESTIONS[2], 30), on_done("a")))
    worker.submit(Job("b", synthesis(QUESTIONS[3], 30), on_done("b")))
    assert done.wait(60)
    worker.close()
    for key, question in (("a", QUESTIONS[2]), ("b", QUESTIONS[3])):
        alone = uncached.generate(synthesis(question, 30))
        assert (results[key].text, results[key].new_tokens) == (alone.text, alone.new_tokens)
        assert results[key].cached_tokens == shared_start(cached)


def test_scoring_prefills_reuse_kept_prefixes_and_read_the_same_logits(cached, uncached):
    cached.prefixes.clear()
    ids = [cached.prompt_ids(synthesis(q).messages) for q in QUESTIONS]
    hits = cached.prefixes.stats.hits
    got = [cached.last_logits(i) for i in ids]
    want = [uncached.last_logits(i) for i in ids]
    assert all(np.array_equal(g, w) for g, w in zip(got, want))
    assert cached.prefixes.stats.hits - hits == len(QUESTIONS) - 2


def test_a_budget_smaller_than_one_prefix_keeps_nothing_and_changes_nothing(tiny_model_dir, uncached):
    small = OnnxEngine(tiny_model_dir, threads=1, max_batch=2, prefill_chunk=CHUNK, prefix_cache_bytes=1024)
    got = [small.generate(synthesis(q)) for q in QUESTIONS]
    assert len(small.prefixes) == 0 and small.prefixes.nbytes == 0
    assert [g.text for g in got] == [uncached.generate(synthesis(q)).text for q in QUESTIONS]
    assert all(g.cached_tokens == 0 for g in got)


@pytest.mark.slow
def test_default_model_syntheses_skip_the_system_prompts_prefill_and_answer_the_same(default_model_dir: Path):
    """The real case: the mesh's synthesis prompts share the template and the synthesis system prompt (~130
    tokens with SmolLM2's tokenizer): two whole 64-token chunks are taken up, the answers are token for token
    those of an engine without the cache."""
    from edge_agent.agent.moa import proposal_messages
    from edge_agent.config import SYNTHESIS_SYSTEM_PROMPT

    def request(question: str) -> GenerationRequest:
        answers = [f"{question} One answer says {n}." for n in ("yes", "no", "maybe")]
        wire = proposal_messages(question, SYNTHESIS_SYSTEM_PROMPT, answers)
        return GenerationRequest(messages=tuple(ChatMessage(m.role, m.content) for m in wire), max_new_tokens=24,
                                 temperature=0)

    with_cache = OnnxEngine(default_model_dir, threads=2)
    without = OnnxEngine(default_model_dir, threads=2, prefix_cache_bytes=0)
    got = [with_cache.generate(request(q)) for q in QUESTIONS]
    want = [without.generate(request(q)) for q in QUESTIONS]
    assert [(g.text, g.new_tokens) for g in got] == [(w.text, w.new_tokens) for w in want]
    assert [g.cached_tokens for g in got] == [0, 0, 128, 128, 128]
