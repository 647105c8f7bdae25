"""AgentMetrics: every documented name present, values as observed, label sets bounded (no HTTP: registry reads)."""

import math
import re
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from edge_agent.agent.metrics import AgentMetrics

DOC = Path(__file__).resolve().parents[2] / "docs" / "ecosystem.md"


@pytest.fixture
def metrics():
    return AgentMetrics("agent1", "smollm2-135m-instruct", "0.1.0")


def value(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, labels or None)


def test_build_info_names_version_model_and_device(metrics):
    assert value(metrics, "edgemoa_build_info", version="0.1.0", model="smollm2-135m-instruct", device="agent1") == 1


def test_inference_tokens_and_batches(metrics):
    metrics.observe_inference(0.8, 64, 1, prompt_tokens=40)
    metrics.observe_inference(2.5, 120, 3, prompt_tokens=300, cached_tokens=128)
    metrics.observe_inference(math.nan, -1, 0, prompt_tokens=5, cached_tokens=9)  # nonsense: dropped
    assert value(metrics, "edgemoa_prompt_tokens_total", source="prefilled") == 212
    assert value(metrics, "edgemoa_prompt_tokens_total", source="cached") == 128
    assert value(metrics, "edgemoa_inference_seconds_count") == 2
    assert value(metrics, "edgemoa_inference_seconds_sum") == pytest.approx(3.3)
    assert value(metrics, "edgemoa_inference_seconds_bucket", le="1.0") == 1
    assert value(metrics, "edgemoa_generated_tokens_total") == 184
    assert value(metrics, "edgemoa_inference_batch_size_bucket", le="2.0") == 1
    assert value(metrics, "edgemoa_inference_batch_size_count") == 2


def test_prompt_latency_by_m_and_k(metrics):
    metrics.observe_answer(4.2, 1, 2)
    metrics.observe_answer(6.0, 1, 2)
    metrics.observe_answer(0.9, 0, 0)
    assert value(metrics, "edgemoa_prompt_latency_seconds_count", layers="1", proposers="2") == 2
    assert value(metrics, "edgemoa_prompt_latency_seconds_sum", layers="1", proposers="2") == pytest.approx(10.2)
    assert value(metrics, "edgemoa_prompt_latency_seconds_bucket", layers="0", proposers="0", le="1.0") == 1


def test_failures_refusals_and_tasks_keep_bounded_labels(metrics):
    metrics.observe_failure("timeout")
    metrics.observe_refusal("queue_full")
    metrics.observe_refusal("queue_full")
    metrics.observe_refusal("Robert'); DROP TABLE --")
    metrics.task_served(for_peer=True)
    metrics.task_served(for_peer=False)
    metrics.task_served(for_peer=True)
    assert value(metrics, "edgemoa_prompts_failed_total", code="timeout") == 1
    assert value(metrics, "edgemoa_refusals_total", reason="queue_full") == 2
    assert value(metrics, "edgemoa_refusals_total", reason="other") == 1
    assert value(metrics, "edgemoa_tasks_served_total", origin="peer") == 2
    assert value(metrics, "edgemoa_tasks_served_total", origin="own") == 1


def test_state_gauges(metrics):
    metrics.set_state(queue_length=3, queue_bytes=4096, queue_cap_bytes=10_000_000, alpha_s=1.25, peers_alive=3,
                      journal_rows=7, memory_available_bytes=900_000_000)
    metrics.set_state(queue_length=2, queue_bytes=2048, queue_cap_bytes=10_000_000, alpha_s=None, peers_alive=3,
                      journal_rows=7, memory_available_bytes=900_000_000)
    assert value(metrics, "edgemoa_queue_length") == 2 and value(metrics, "edgemoa_queue_bytes") == 2048
    assert value(metrics, "edgemoa_alpha_seconds") == 1.25  # None keeps the last estimate
    assert value(metrics, "edgemoa_queue_cap_bytes") == 10_000_000
    assert value(metrics, "edgemoa_peers_alive") == 3 and value(metrics, "edgemoa_journal_rows") == 7
    assert value(metrics, "edgemoa_memory_available_bytes") == 900_000_000


def test_names_follow_prometheus_rules_and_every_one_is_documented(metrics):
    text = generate_latest(metrics.registry).decode()
    families = set(re.findall(r"^# TYPE (\S+) ", text, flags=re.MULTILINE))
    assert len(families) >= 14
    documented = DOC.read_text()
    for name in families:
        assert re.match(r"^edgemoa_[a-z0-9_]+$", name), name  # underscores only: colons are for recording rules
        shown = name if name.endswith("_total") or f"# TYPE {name} counter" not in text else name + "_total"
        assert f"`{shown}`" in documented, f"{shown} is not in docs/ecosystem.md"


def test_two_agents_in_one_process_do_not_clash():
    a, b = AgentMetrics("a", "m", "1"), AgentMetrics("b", "m", "1")
    a.task_served(for_peer=False)
    assert b.registry.get_sample_value("edgemoa_tasks_served_total", {"origin": "own"}) == 0
