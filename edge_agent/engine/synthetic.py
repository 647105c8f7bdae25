"""A load-testing engine: sleeps a sampled service time and echoes. Never the demo or the default."""

from __future__ import annotations

import hashlib
import random
import re
import threading
import time
from collections.abc import Callable

from ..errors import InferenceError, TooLargeError
from .base import ChatMessage, Generation, GenerationRequest


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
    ):
        if distribution not in ("deterministic", "exponential"):
            raise ValueError(f"unknown service distribution {distribution!r}")
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be an integer >= 1, not {max_batch!r}")
        if not 0.0 <= batch_cost <= 1.0:
            raise ValueError(f"batch_cost must be within [0, 1], not {batch_cost!r}")
        self.max_batch = max_batch
        self.batch_cost = batch_cost
        self.model_id = model_id
        self.context_length = context_length
        self.kv_bytes_per_token = kv_bytes_per_token
        self._service_s = service_s
        self._distribution = distribution
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def count_prompt_tokens(self, messages: tuple[ChatMessage, ...]) -> int:
        return sum(len(m.content.split()) + 4 for m in messages)

    def _service_time(self) -> float:
        if self._distribution == "deterministic":
            return self._service_s
        with self._lock:
            return self._rng.expovariate(1.0 / self._service_s)

    def batch_service_s(self, b: int) -> float:
        """Mean service time of a batch of b requests: alpha(b) = service_s * (1 + batch_cost * (b - 1))."""
        return self._service_s * (1.0 + self.batch_cost * (b - 1))

    def _check(self, request: GenerationRequest) -> int:
        prompt_tokens = self.count_prompt_tokens(request.messages)
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

    def warm_up(self) -> None:
        pass

    def close(self) -> None:
        pass
