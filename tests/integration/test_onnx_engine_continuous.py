"""Continuous batching in OnnxEngine: rows join at the next step, leave at once, and decode as they would alone."""

import threading
import time
from pathlib import Path

import pytest

from edge_agent.engine.base import ChatMessage, Generation, GenerationRequest
from edge_agent.engine.onnx import OnnxEngine
from edge_agent.engine.worker import InferenceWorker, Job


def greedy(text: str, max_new_tokens: int, **kwargs) -> GenerationRequest:
    return GenerationRequest(
        messages=(ChatMessage("user", text),), max_new_tokens=max_new_tokens, temperature=0, **kwargs
    )


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> OnnxEngine:
    engine = OnnxEngine(tiny_model_dir, threads=1, seed=5, max_batch=4, prefill_chunk=16)
    yield engine
    engine.close()


def test_a_job_joins_the_running_batch_and_each_row_equals_its_solo_run(engine: OnnxEngine):
    worker = InferenceWorker(engine, max_batch=4)
    results: dict[str, Generation] = {}
    ended: dict[str, float] = {}
    all_done = threading.Event()
    first_delta = threading.Event()
    requests = {
        "long": greedy("a long answer about brokers and bridges", 120),
        "short": greedy("hi", 6),
        "mid": greedy("Write a haiku about edge boards and MQTT brokers, please, in English.", 30),
        "sampled": GenerationRequest(
            messages=(ChatMessage("user", "pick"),), max_new_tokens=20, temperature=0.9, seed=11
        ),
    }

    def done(key: str):
        def on_done(outcome):
            results[key], ended[key] = outcome, time.perf_counter()
            if len(results) == len(requests):
                all_done.set()

        return on_done

    worker.submit(Job("long", requests["long"], done("long"), lambda _d: first_delta.set()))
    assert first_delta.wait(30)  # the long job is decoding
    assert worker.running == 1
    for key in ("short", "mid", "sampled"):
        worker.submit(Job(key, requests[key], done(key)))
    assert all_done.wait(60)
    worker.close()
    for key, request in requests.items():
        solo = engine.generate(request)
        assert isinstance(results[key], Generation), results[key]
        assert (results[key].text, results[key].new_tokens) == (solo.text, solo.new_tokens), key
    # they joined the long one instead of waiting for it: each ended before it
    assert max(ended["short"], ended["mid"], ended["sampled"]) < ended["long"]


def test_a_finished_row_leaves_at_once_and_its_memory_is_reused(engine: OnnxEngine):
    batch = engine.open_batch()
    batch.add(greedy("long one", 60), tag="long")
    batch.add(greedy("short one", 3), tag="short")
    steps, finished = 0, []
    while not finished:
        finished = batch.step()
        steps += 1
    assert [tag for tag, _ in finished] == ["short"]
    assert batch.decoding == 1  # left in the step it ended in
    held = batch.kv_bytes
    batch.add(greedy("newcomer", 5), tag="new")  # fits the buffer the short one left
    while len(batch) > 1:
        batch.step()
        assert batch.kv_bytes == held
    while len(batch):
        batch.step()
    assert batch.kv_bytes == 0  # an empty batch gives its buffer back


def test_a_newcomers_prefill_stalls_the_others_one_chunk_per_step(engine: OnnxEngine):
    batch = engine.open_batch()
    batch.add(greedy("decoding", 100), tag="a")
    while batch.decoding < 1:
        batch.step()
    long_prompt = " ".join(["word"] * 120)
    prompt_tokens = engine.count_prompt_tokens((ChatMessage("user", long_prompt),))
    batch.add(greedy(long_prompt, 4), tag="b")
    steps = 0
    while batch.decoding < 2:
        assert batch.step() == []
        steps += 1
    finished = {}
    while len(batch):
        finished.update(batch.step())
    # one prefill chunk (16 tokens here) per step, each step also a decode step for "a"; the chat template's
    # start may come from the prefix cache (kept from earlier prompts), the rest is prefilled chunk by chunk
    reused = finished["b"].cached_tokens
    assert reused % 16 == 0 and reused < 64
    assert steps == len(range(reused, prompt_tokens, 16)) - (prompt_tokens % 16 == 1)


def test_chunked_prefill_gives_the_same_tokens_as_one_run(tiny_model_dir: Path):
    prompt = greedy(" ".join(["token"] * 90), 24)
    whole = OnnxEngine(tiny_model_dir, threads=1, prefill_chunk=4096).generate(prompt)
    chunked = OnnxEngine(tiny_model_dir, threads=1, prefill_chunk=16).generate(prompt)
    assert (chunked.text, chunked.new_tokens) == (whole.text, whole.new_tokens)


def test_the_classic_loop_serves_a_batch_one_at_a_time(tiny_model_dir: Path):
    concat = OnnxEngine(tiny_model_dir, threads=1, share_kv_buffer=False)
    assert not concat.continuous and concat.max_batch == 1
    requests = [greedy("one", 5), greedy("two", 7)]
    results = concat.generate_batch(requests)
    assert [r.new_tokens for r in results] == [5, 7] and results[0].seconds == results[1].seconds
    worker = InferenceWorker(concat, max_batch=4)  # static service, one at a time
    done = threading.Event()
    got: list[Generation] = []
    worker.submit(Job("x", requests[0], lambda g: (got.append(g), done.set())))
    assert done.wait(30)
    worker.close()
    assert got[0].text == concat.generate(requests[0]).text
