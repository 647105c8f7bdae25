"""SyntheticEngine.generate_batch: one result per request, errors isolated, a batch of b costs alpha(b)."""

import time

import pytest

from edge_agent.engine.base import ChatMessage, Generation, GenerationRequest
from edge_agent.engine.synthetic import SyntheticEngine
from edge_agent.errors import TooLargeError


def request(text: str, max_new_tokens: int = 16) -> GenerationRequest:
    return GenerationRequest(messages=(ChatMessage("user", text),), max_new_tokens=max_new_tokens)


def test_results_come_back_in_order_and_equal_solo_generations():
    engine = SyntheticEngine(service_s=0.0)
    requests = [request(f"question number {i} about boards", max_new_tokens=2 + i) for i in range(4)]
    results = engine.generate_batch(requests)
    assert len(results) == 4
    for req, result in zip(requests, results):
        solo = engine.generate(req)
        assert isinstance(result, Generation)
        assert (result.text, result.prompt_tokens, result.new_tokens) == (
            solo.text,
            solo.prompt_tokens,
            solo.new_tokens,
        )


def test_too_large_request_fails_alone():
    engine = SyntheticEngine(service_s=0.0, context_length=64)
    results = engine.generate_batch(
        [request("fits"), request("does not fit", max_new_tokens=1000), request("ok")]
    )
    assert isinstance(results[0], Generation) and isinstance(results[2], Generation)
    assert isinstance(results[1], TooLargeError)
    assert results[0].text.endswith("fits") and results[2].text.endswith("ok")


def test_alpha_of_b_follows_batch_cost():
    engine = SyntheticEngine(service_s=0.2, batch_cost=0.25)
    assert engine.max_batch == 4 and engine.batch_cost == 0.25
    assert [engine.batch_service_s(b) for b in (1, 2, 4)] == pytest.approx([0.2, 0.25, 0.35])


def test_a_batch_sleeps_once_and_reports_the_call_wall_time():
    engine = SyntheticEngine(service_s=0.1, batch_cost=0.5)
    started = time.perf_counter()
    results = engine.generate_batch([request(f"q{i}") for i in range(3)])
    elapsed = time.perf_counter() - started
    assert 0.2 <= elapsed < 0.35  # one sleep of 0.1 * (1 + 0.5 * 2) = 0.2 s, not 3 x 0.1 s
    assert {r.seconds for r in results} == {results[0].seconds}  # one wall time for the whole call
    assert 0.2 <= results[0].seconds <= elapsed


def test_more_than_max_batch_runs_in_successive_batches():
    engine = SyntheticEngine(service_s=0.05, batch_cost=0.0, max_batch=2)
    started = time.perf_counter()
    results = engine.generate_batch([request(f"q{i}") for i in range(5)])  # batches of 2, 2 and 1
    elapsed = time.perf_counter() - started
    assert len(results) == 5 and all(isinstance(r, Generation) for r in results)
    assert 0.15 <= elapsed < 0.25


def test_only_invalid_requests_cost_nothing():
    engine = SyntheticEngine(service_s=1.0, context_length=8)
    started = time.perf_counter()
    results = engine.generate_batch([request("too long for the context", max_new_tokens=100)])
    assert isinstance(results[0], TooLargeError) and time.perf_counter() - started < 0.5
    assert engine.generate_batch([]) == []


@pytest.mark.parametrize(
    "kwargs", [{"max_batch": 0}, {"max_batch": 1.5}, {"batch_cost": -0.1}, {"batch_cost": 2}]
)
def test_bad_batch_settings_fail_fast(kwargs):
    with pytest.raises(ValueError):
        SyntheticEngine(service_s=0.1, **kwargs)


def test_synthetic_engine_streams_its_echo_across_the_service_time():
    engine = SyntheticEngine(service_s=0.2, seed=1)
    request = GenerationRequest(messages=(ChatMessage("user", "one two three four"),), max_new_tokens=8)
    stamps: list[tuple[float, str]] = []
    started = time.perf_counter()
    result = engine.generate(request, on_delta=lambda d: stamps.append((time.perf_counter() - started, d)))
    assert engine.streams and "".join(d for _, d in stamps) == result.text == engine.generate(request).text
    assert len(stamps) == len(result.text.split())
    # spread over the service time, not all at once (sleep may overshoot on a loaded machine, never undershoot)
    assert stamps[-1][0] >= 0.19 and stamps[-1][0] - stamps[0][0] >= 0.19 * (len(stamps) - 1) / len(stamps)


@pytest.mark.parametrize("max_batch", [4, 1])
def test_synthetic_continuous_batch_lets_a_newcomer_join(max_batch: int):
    """Free batching (cost 0): a job arriving a quarter into another's service ends a quarter after it; with
    max_batch = 1 (FCFS) it waits for the first and ends a whole service time after it."""
    from edge_agent.engine.worker import InferenceWorker, Job

    service = 0.4
    engine = SyntheticEngine(service_s=service, batch_cost=0.0, max_batch=max_batch)
    worker = InferenceWorker(engine, max_batch=max_batch)
    ends: dict[str, float] = {}
    request = GenerationRequest(messages=(ChatMessage("user", "x"),), max_new_tokens=4)
    worker.submit(Job("a", request, lambda g: ends.setdefault("a", time.perf_counter())))
    time.sleep(service / 4)
    worker.submit(Job("b", request, lambda g: ends.setdefault("b", time.perf_counter())))
    deadline = time.monotonic() + 10
    while len(ends) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.close()
    gap = ends["b"] - ends["a"]
    if max_batch > 1:
        assert gap < 0.6 * service  # ~service / 4: it joined the running batch
    else:
        assert gap > 0.9 * service  # FCFS: served after the first


def test_synthetic_batch_profile_sets_the_step_cost(tmp_path):
    import json

    from edge_agent.engine.batch_profile import BatchProfile

    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"step_s": {"1": 0.01, "2": 0.015, "3": 0.03}}))
    profile = BatchProfile.read(path)
    assert profile.slowdown(2) == pytest.approx(1.5) and profile.speedup(2) == pytest.approx(4 / 3)
    assert profile.slowdown(4) == pytest.approx(4.5)  # extrapolated with the last increment
    assert profile.best_rows(3) == 2
    engine = SyntheticEngine(service_s=0.1, max_batch=2, batch_profile=profile)
    batch = engine.open_batch()
    request = GenerationRequest(messages=(ChatMessage("user", "x"),), max_new_tokens=4)
    batch.add(request, tag=1)
    batch.add(request, tag=2)
    started = time.perf_counter()
    done = []
    while len(batch):
        done += batch.step()
    assert sorted(tag for tag, _ in done) == [1, 2]
    # 0.1 s of work at 1.5x per step: at least 0.15 s (sleep may overshoot on a loaded machine, never
    # undershoot, so only the lower bound is checked by the clock; the factor itself is checked above)
    assert time.perf_counter() - started >= 0.145


def test_the_worker_fails_a_bad_job_alone_and_reports_what_the_batch_holds():
    from edge_agent.engine.worker import InferenceWorker, Job

    engine = SyntheticEngine(service_s=0.2, batch_cost=0.0, max_batch=4, context_length=64, kv_bytes_per_token=100)
    worker = InferenceWorker(engine, max_batch=4)
    outcomes: dict[str, object] = {}
    ok = GenerationRequest(messages=(ChatMessage("user", "fine"),), max_new_tokens=8)
    too_large = GenerationRequest(messages=(ChatMessage("user", "x"),), max_new_tokens=100)
    worker.submit(Job("ok", ok, lambda o: outcomes.setdefault("ok", o)))
    worker.submit(Job("big", too_large, lambda o: outcomes.setdefault("big", o)))
    deadline = time.monotonic() + 2
    while worker.running == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert worker.kv_bytes == engine.row_charge_bytes(engine.count_prompt_tokens(ok.messages), 8) == 128 * 100
    while len(outcomes) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.close()
    assert isinstance(outcomes["big"], TooLargeError) and isinstance(outcomes["ok"], Generation)
    assert worker.kv_bytes == 0 and worker.waiting == 0 and worker.running == 0
