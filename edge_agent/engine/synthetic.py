"""A load-testing engine: sleeps a sampled service time and echoes. Never the demo or the default."""

from __future__ import annotations

import hashlib
import random
import threading
import time

from ..errors import TooLargeError
from .base import ChatMessage, Generation, GenerationRequest


class SyntheticEngine:
    """Deterministic given its seed; models a board with mean service time `service_s`."""

    def __init__(
        self,
        *,
        service_s: float,
        distribution: str = "deterministic",
        seed: int | None = None,
        kv_bytes_per_token: int = 4096,
        context_length: int = 8192,
        model_id: str = "synthetic",
    ):
        if distribution not in ("deterministic", "exponential"):
            raise ValueError(f"unknown service distribution {distribution!r}")
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

    def generate(self, request: GenerationRequest) -> Generation:
        prompt_tokens = self.count_prompt_tokens(request.messages)
        if prompt_tokens + request.max_new_tokens > self.context_length:
            raise TooLargeError(
                f"prompt ({prompt_tokens} tokens) + max_new_tokens ({request.max_new_tokens}) "
                f"exceed the context of {self.context_length}"
            )
        started = time.perf_counter()
        time.sleep(self._service_time())
        user = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
        digest = hashlib.sha1(user.encode()).hexdigest()[:8]
        words = user.split()[: max(1, min(request.max_new_tokens, 12))]
        text = f"[{self.model_id} {digest}] " + " ".join(words)
        return Generation(text=text, prompt_tokens=prompt_tokens, new_tokens=len(words) + 2,
                          seconds=time.perf_counter() - started)

    def warm_up(self) -> None:
        pass

    def close(self) -> None:
        pass
