"""A load-testing engine: sleeps a sampled service time and echoes. Never the demo or the default.

Continuous batching (`open_batch`) follows a per-step cost model: a request needs its sampled service time of
work, served in steps of `service_s / STEPS`; a step with b rows lasts `slowdown(b)` times a one-row step (the
batch profile, measured by tools/bench/batching.py, or 1 + batch_cost * (b - 1)), so rows join and leave per step
as in OnnxEngine.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import threading
import time
from collections.abc import Callable

from ..errors import InferenceError, TooLargeError
from .base import ChatMessage, Generation, GenerationRequest, LabelScores
from .batch_profile import BatchProfile
from .kv_cache import round_capacity

STEPS = 32  # decode steps of a request of mean service time
PREFILL_TOKENS_PER_SERVICE = 512  # a score job's prefill of this many prompt tokens takes one mean service time


class SyntheticEngine:
    """Deterministic given its seed; models a board with mean service time `service_s`.

    A batch of b requests takes one service time scaled by `1 + batch_cost * (b - 1)` (DESIGN.md sec. 4:
    alpha(b)), so b tasks are served at a rate of b / alpha(b): 0 models free batching, 1 none at all.
    """

    def __init__(
        self,
        *,
        service_s: float,
        distribution: str = "deterministic",
        seed: int | None = None,
        kv_bytes_per_token: int = 4096,
        context_length: int = 8192,
        model_id: str = "synthetic",
        max_batch: int = 4,
        batch_cost: float = 0.25,
        batch_profile: BatchProfile | None = None,
    ):
        if distribution not in ("deterministic", "exponential"):
            raise ValueError(f"unknown service distribution {distribution!r}")
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be an integer >= 1, not {max_batch!r}")
        if not 0.0 <= batch_cost <= 1.0:
            raise ValueError(f"batch_cost must be within [0, 1], not {batch_cost!r}")
        self.max_batch = max_batch
        self.batch_cost = batch_cost
        self.profile = batch_profile or BatchProfile.linear(batch_cost, max(8, max_batch))
        self.model_id = model_id
        self.context_length = context_length
        self.kv_bytes_per_token = kv_bytes_per_token
        self._service_s = service_s
        self._distribution = distribution
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def count_prompt_tokens(self, messages: tuple[ChatMessage, ...]) -> int:
        return sum(len(m.content.split()) + 4 for m in messages)

    def prompt_ids(self, messages: tuple[ChatMessage, ...]) -> list[int]:
        """Stand-in token ids (one per word, plus the template's): only their number matters here."""
        return list(range(self.count_prompt_tokens(messages)))

    def row_charge_bytes(self, prompt_tokens: int, max_new_tokens: int) -> int:
        """As OnnxEngine's: the KV slots a row holds (in steps of 128), at kv_bytes_per_token."""
        return round_capacity(prompt_tokens + max_new_tokens) * self.kv_bytes_per_token

    def _service_time(self) -> float:
        if self._distribution == "deterministic":
            return self._service_s
        with self._lock:
            return self._rng.expovariate(1.0 / self._service_s)

    def batch_service_s(self, b: int) -> float:
        """Mean service time of a batch of b requests: alpha(b) = service_s * (1 + batch_cost * (b - 1))."""
        return self._service_s * (1.0 + self.batch_cost * (b - 1))

    def _check(self, request: GenerationRequest) -> int:
        prompt_tokens = (len(request.prompt_ids) if request.prompt_ids is not None
                         else self.count_prompt_tokens(request.messages))
        if prompt_tokens + request.max_new_tokens > self.context_length:
            raise TooLargeError(
                f"prompt ({prompt_tokens} tokens) + max_new_tokens ({request.max_new_tokens}) "
                f"exceed the context of {self.context_length}"
            )
        return prompt_tokens

    def _echo(self, request: GenerationRequest, prompt_tokens: int, seconds: float) -> Generation:
        user = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
        digest = hashlib.sha1(user.encode()).hexdigest()[:8]
        words = user.split()[: max(1, min(request.max_new_tokens, 12))]
        text = f"[{self.model_id} {digest}] " + " ".join(words)
        return Generation(text=text, prompt_tokens=prompt_tokens, new_tokens=len(words) + 2, seconds=seconds)

    streams = True
    continuous = True  # open_batch: rows join and leave per step

    def generate(
        self, request: GenerationRequest, on_delta: Callable[[str], None] | None = None
    ) -> Generation:
        """Sleeps one service time; with `on_delta`, hands the echo over word by word spread across it."""
        prompt_tokens = self._check(request)
        started = time.perf_counter()
        service_s = self._service_time()
        if on_delta is None:
            time.sleep(service_s)
            return self._echo(request, prompt_tokens, time.perf_counter() - started)
        echo = self._echo(request, prompt_tokens, 0.0)
        pieces = re.findall(r"\S+\s*", echo.text) or [echo.text]
        for index, piece in enumerate(pieces, 1):
            time.sleep(max(0.0, started + service_s * index / len(pieces) - time.perf_counter()))
            on_delta(piece)
        return Generation(echo.text, prompt_tokens, echo.new_tokens, time.perf_counter() - started)

    def score_labels(self, messages: tuple[ChatMessage, ...], labels: tuple[str, ...]) -> LabelScores:
        """Pseudo log-probabilities from a hash of the prompt and each label (deterministic, meaningless: for
        protocol and load tests only), after a modelled prefill of service_s per 512 prompt tokens."""
        prompt_tokens = self.count_prompt_tokens(messages)
        time.sleep(self._service_s * prompt_tokens / PREFILL_TOKENS_PER_SERVICE)
        text = "\x00".join(f"{m.role}:{m.content}" for m in messages)
        logits = [int(hashlib.sha1(f"{text}\x01{label}".encode()).hexdigest()[:8], 16) / 2**32 * 4.0
                  for label in labels]
        top = max(logits, default=0.0)
        log_z = top + math.log(sum(math.exp(x - top) for x in logits)) if logits else 0.0
        return LabelScores({label: x - log_z for label, x in zip(labels, logits, strict=True)}, prompt_tokens)

    def generate_batch(self, requests: list[GenerationRequest]) -> list[Generation | Exception]:
        """As OnnxEngine.generate_batch: one result or error per request; `max_batch` valid ones per sleep.

        Each batch of b valid requests sleeps one sampled service time times (1 + batch_cost * (b - 1));
        `seconds` of every result is the wall time of the whole call.
        """
        started = time.perf_counter()
        results: list[Generation | Exception | None] = [None] * len(requests)
        valid: list[tuple[int, int]] = []
        for index, request in enumerate(requests):
            try:
                valid.append((index, self._check(request)))
            except InferenceError as exc:
                results[index] = exc
        for first in range(0, len(valid), self.max_batch):
            b = len(valid[first : first + self.max_batch])
            time.sleep(self._service_time() * (1.0 + self.batch_cost * (b - 1)))
        seconds = time.perf_counter() - started
        for index, prompt_tokens in valid:
            results[index] = self._echo(requests[index], prompt_tokens, seconds)
        return results  # type: ignore[return-value]  # every slot is filled above

    def open_batch(self, *, max_rows: int | None = None) -> SyntheticBatch:
        rows = self.max_batch if max_rows is None else max(1, min(max_rows, self.max_batch))
        return SyntheticBatch(self, rows)

    def warm_up(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Row:
    def __init__(self, tag, request, prompt_tokens, work_s, on_delta, echo: Generation):
        self.tag, self.request, self.prompt_tokens = tag, request, prompt_tokens
        self.left_s, self.work_s, self.on_delta = work_s, work_s, on_delta
        self.started = time.perf_counter()
        self.echo = echo  # made once: a step only sleeps and counts
        self.pieces = (re.findall(r"\S+\s*", echo.text) or [echo.text]) if on_delta is not None else []
        self.sent = 0  # pieces of the echo streamed


class SyntheticBatch:
    """The synthetic engine's continuous batch: same interface as OnnxBatch (add, step, len, free_rows)."""

    def __init__(self, engine: SyntheticEngine, rows: int):
        self._engine = engine
        self._max_rows = rows
        self._rows: list[_Row] = []
        self._step_s = engine._service_s / STEPS
        self._late_s = 0.0  # how far past its schedule the last sleep woke; the next steps sleep that much less

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def free_rows(self) -> int:
        return self._max_rows - len(self._rows)

    @property
    def decoding(self) -> int:
        return len(self._rows)

    @property
    def kv_bytes(self) -> int:
        """What the rows would hold in a real engine: each as long as the longest (one shared buffer)."""
        if not self._rows:
            return 0
        longest = max(row.prompt_tokens + row.request.max_new_tokens for row in self._rows)
        return len(self._rows) * round_capacity(longest) * self._engine.kv_bytes_per_token

    def add(
        self, request: GenerationRequest, *, tag: object = None, on_delta: Callable[[str], None] | None = None
    ):
        if self.free_rows <= 0:
            raise ValueError("the batch is full")
        prompt_tokens = self._engine._check(request)
        echo = self._engine._echo(request, prompt_tokens, 0.0)
        self._rows.append(_Row(tag, request, prompt_tokens, self._engine._service_time(), on_delta, echo))

    def drop_all(self) -> list[object]:
        tags = [row.tag for row in self._rows]
        self._rows = []
        return tags

    def step(self) -> list[tuple[object, Generation | Exception]]:
        """One step: every row advances by one step of work (less if it needs less), in slowdown(b) times."""
        if not self._rows:
            return []
        advance = min(self._step_s, min(row.left_s for row in self._rows))
        # a step that woke late (a busy machine's scheduler) is owed by the next ones, so the engine is busy for its
        # service time per task on average, not that plus every wake-up's delay (at most one service time is owed)
        step_s = advance * self._engine.profile.slowdown(len(self._rows))
        now = time.perf_counter()
        target = now + step_s - self._late_s
        time.sleep(max(0.0, target - now))
        self._late_s = min(max(0.0, time.perf_counter() - target), self._engine._service_s)
        finished, live = [], []
        for row in self._rows:
            row.left_s -= advance
            if row.on_delta is not None:
                pieces = row.pieces
                due = len(pieces) if row.left_s <= 1e-12 else int(len(pieces) * (1 - row.left_s / row.work_s))
                for piece in pieces[row.sent : due]:
                    row.on_delta(piece)
                row.sent = max(row.sent, due)
            if row.left_s <= 1e-12:
                seconds = time.perf_counter() - row.started
                echo = row.echo
                finished.append((row.tag, Generation(echo.text, row.prompt_tokens, echo.new_tokens, seconds)))
            else:
                live.append(row)
        self._rows = live
        return finished
