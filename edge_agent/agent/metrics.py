"""Prometheus metrics of one agent (`edgemoa_*`, docs/ecosystem.md), served on their own small HTTP port."""

from __future__ import annotations

import logging
import math
import re

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    start_http_server,
)

log = logging.getLogger(__name__)
_LABEL_VALUE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")  # error codes and refusal reasons: a bounded vocabulary
INFERENCE_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 60, 120)
LATENCY_BUCKETS_S = (0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16)
disable_created_metrics()  # no `*_created` series: half the lines of a scrape, and Prometheus does not read them


def _label(value: str) -> str:
    """Codes from the agent are a short fixed list; anything else is `other`, so label sets stay bounded."""
    return value if _LABEL_VALUE.match(value) else "other"


def _finite(value: float | None) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


class AgentMetrics:
    """Every metric of one agent in its own registry (so several agents can live in one test process).

    The agent calls the `observe_*` methods from its loop or inference thread (prometheus_client is thread-safe)
    and `set_state` on each heartbeat.
    """

    def __init__(self, device: str, model_id: str, version: str, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        Info("edgemoa_build", "The agent's version, model and device id (value 1).", registry=r).info(
            {"version": version, "model": model_id, "device": device})
        self.inference_seconds = Histogram(
            "edgemoa_inference_seconds", "Wall time of one inference call (a batch counts once).",
            buckets=INFERENCE_BUCKETS_S, registry=r)
        self.inference_batch_size = Histogram(
            "edgemoa_inference_batch_size", "Tasks served together in one inference call.",
            buckets=BATCH_BUCKETS, registry=r)
        self.generated_tokens = Counter(
            "edgemoa_generated_tokens", "New tokens generated (every task, own and peers').", registry=r)
        self.prompt_tokens = Counter(
            "edgemoa_prompt_tokens", "Prompt tokens of the tasks run: prefilled, or taken from the prefix cache.",
            ["source"], registry=r)
        self.prompt_latency_seconds = Histogram(
            "edgemoa_prompt_latency_seconds", "End-to-end latency of this agent's own users' prompts, answered.",
            ["layers", "proposers"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.prompts_failed = Counter(
            "edgemoa_prompts_failed", "Own users' prompts answered with an error, by error code.", ["code"],
            registry=r)
        self.refusals = Counter(
            "edgemoa_refusals", "Prompts and peer tasks refused at admission, by reason.", ["reason"], registry=r)
        self.tasks_served = Counter(
            "edgemoa_tasks_served", "Inference tasks run, for this agent's own prompts or for a peer's.", ["origin"],
            registry=r)
        self.queue_length = Gauge("edgemoa_queue_length", "Tasks waiting in the FCFS queue.", registry=r)
        self.queue_bytes = Gauge("edgemoa_queue_bytes", "Memory charged to the queued tasks.", registry=r)
        self.queue_cap_bytes = Gauge("edgemoa_queue_cap_bytes", "The queue's memory cap now.", registry=r)
        self.alpha_seconds = Gauge("edgemoa_alpha_seconds", "Estimated mean inference time (alpha).", registry=r)
        self.peers_alive = Gauge("edgemoa_peers_alive", "Peers heard from within peer_timeout_s.", registry=r)
        self.journal_rows = Gauge("edgemoa_journal_rows", "Rows in the journal (accepted work and outbox).",
                                  registry=r)
        self.memory_available_bytes = Gauge("edgemoa_memory_available_bytes",
                                            "Memory available on the board (psutil).", registry=r)
        for origin in ("own", "peer"):  # present from the first scrape, so rate() works from the start
            self.tasks_served.labels(origin=origin)
        for source in ("prefilled", "cached"):
            self.prompt_tokens.labels(source=source)
        self._server = None
        self._thread = None

    # -- serving --
    def serve(self, host: str = "127.0.0.1", port: int = 9464) -> int:
        """Start the /metrics HTTP endpoint in a daemon thread; returns the bound port (port 0 picks one)."""
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        bound = int(self._server.server_port)
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    # -- events --
    def observe_inference(self, seconds: float, new_tokens: int, batch_size: int = 1, prompt_tokens: int = 0,
                          cached_tokens: int = 0) -> None:
        if _finite(prompt_tokens) and _finite(cached_tokens) and 0 <= cached_tokens <= prompt_tokens:
            self.prompt_tokens.labels(source="prefilled").inc(prompt_tokens - cached_tokens)
            self.prompt_tokens.labels(source="cached").inc(cached_tokens)
        if _finite(seconds) and seconds >= 0:
            self.inference_seconds.observe(seconds)
        if _finite(new_tokens) and new_tokens > 0:
            self.generated_tokens.inc(new_tokens)
        if _finite(batch_size) and batch_size >= 1:
            self.inference_batch_size.observe(batch_size)

    def observe_answer(self, latency_s: float, layers: int, proposers: int) -> None:
        if _finite(latency_s) and latency_s >= 0:
            self.prompt_latency_seconds.labels(layers=str(int(layers)), proposers=str(int(proposers))).observe(
                latency_s)

    def observe_failure(self, code: str) -> None:
        self.prompts_failed.labels(code=_label(code)).inc()

    def observe_refusal(self, reason: str) -> None:
        self.refusals.labels(reason=_label(reason)).inc()

    def task_served(self, for_peer: bool) -> None:
        self.tasks_served.labels(origin="peer" if for_peer else "own").inc()

    def set_state(self, queue_length: int, queue_bytes: int, queue_cap_bytes: int, alpha_s: float | None,
                  peers_alive: int, journal_rows: int, memory_available_bytes: int) -> None:
        for gauge, value in ((self.queue_length, queue_length), (self.queue_bytes, queue_bytes),
                             (self.queue_cap_bytes, queue_cap_bytes), (self.alpha_seconds, alpha_s),
                             (self.peers_alive, peers_alive), (self.journal_rows, journal_rows),
                             (self.memory_available_bytes, memory_available_bytes)):
            if _finite(value):
                gauge.set(value)
