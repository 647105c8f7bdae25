"""The agent's /metrics endpoint scraped over real HTTP, parsed with Prometheus' own text parser."""

import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.agent.metrics import AgentMetrics


def scrape(port: int, path: str = "/metrics") -> tuple[str, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return response.headers["Content-Type"], response.read().decode()


def test_scrape_after_observations_and_close_frees_the_port():
    metrics = AgentMetrics("agent7", "tiny", "0.1.0")
    port = metrics.serve("127.0.0.1", 0)
    try:
        assert port > 0
        metrics.observe_inference(1.5, 40, 2)
        metrics.observe_answer(3.0, 1, 2)
        metrics.observe_refusal("queue_full")
        metrics.set_state(1, 100, 1000, 1.5, 2, 4, 123456789)
        content_type, text = scrape(port)
        assert content_type.startswith("text/plain") and "version=0.0.4" in content_type
        families = {f.name: f for f in text_string_to_metric_families(text)}
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
        assert samples[("edgemoa_build_info", (("device", "agent7"), ("model", "tiny"), ("version", "0.1.0")))] == 1
        assert samples[("edgemoa_generated_tokens_total", ())] == 40
        assert samples[("edgemoa_prompt_latency_seconds_count", (("layers", "1"), ("proposers", "2")))] == 1
        assert samples[("edgemoa_refusals_total", (("reason", "queue_full"),))] == 1
        assert samples[("edgemoa_memory_available_bytes", ())] == 123456789
        assert families["edgemoa_inference_seconds"].type == "histogram"
    finally:
        metrics.close()
    with pytest.raises(urllib.error.URLError):
        scrape(port)


def test_a_taken_port_is_an_error():
    first = AgentMetrics("a", "m", "1")
    port = first.serve("127.0.0.1", 0)
    try:
        with pytest.raises(OSError):
            AgentMetrics("b", "m", "1").serve("127.0.0.1", port)
    finally:
        first.close()
