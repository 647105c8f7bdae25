"""A judge behind any OpenAI-compatible chat endpoint that returns top log-probabilities (AlpacaEval's weighted
judge: one token, `logprobs: true`, then the labels' probabilities among the top ones)."""

from __future__ import annotations

import json
import logging
import math
import os
import urllib.error
import urllib.request

from ..errors import TransportError

log = logging.getLogger(__name__)


class HttpScorer:
    def __init__(self, url: str, *, api_key_env: str = "OPENAI_API_KEY", model: str | None = None,
                 top_logprobs: int = 20, timeout_s: float = 120.0):
        base = url.rstrip("/")
        self.url = base if base.endswith("/chat/completions") else (
            base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions"))
        self.model = model or "default"
        self.name = f"{self.url}#{self.model}"
        self._key = os.environ.get(api_key_env)
        self._top = top_logprobs
        self._timeout_s = timeout_s

    def label_logprobs(self, turns: list[tuple[str, str]], labels: tuple[str, ...]) -> dict[str, float]:
        body = {"model": self.model, "messages": [{"role": r, "content": t} for r, t in turns], "max_tokens": 1,
                "temperature": 1, "logprobs": True, "top_logprobs": self._top}
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:  # the user's URL
                reply = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise TransportError(f"judge {self.url}: HTTP {exc.code}: {exc.read()[:300]!r}") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise TransportError(f"judge {self.url}: {exc}") from exc
        try:
            top = reply["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        except (KeyError, IndexError, TypeError):
            raise TransportError(f"judge {self.url} returned no top_logprobs: {str(reply)[:300]}") from None
        found: dict[str, float] = {}
        for entry in top:  # the first occurrence of a label is its likeliest spelling
            token = str(entry.get("token", ""))
            if token in labels and token not in found:
                found[token] = float(entry["logprob"])
        return {label: found.get(label, -math.inf) for label in labels}

    def close(self) -> None:
        pass
