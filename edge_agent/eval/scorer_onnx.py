"""A judge run by our own ONNX engine on a built model: no llama.cpp needed, so CI tests the judge on the tiny model."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..engine.base import ChatMessage
from ..engine.label_scores import keep_the_end
from ..engine.onnx import OnnxEngine
from .scorer import log_softmax_at

log = logging.getLogger(__name__)


class OnnxScorer:
    def __init__(self, model_dir: Path, *, threads: int = 2):
        self.engine = OnnxEngine(model_dir, threads=threads, max_batch=1)
        self.name = f"onnx:{self.engine.model_id}"

    def _prompt_ids(self, turns: list[tuple[str, str]]) -> list[int]:
        prompt = self.engine.render_prompt(tuple(ChatMessage(role, text) for role, text in turns))
        ids = self.engine.encode(prompt)
        if len(ids) >= self.engine.context_length:  # keep the end: the task and the answer slot are there
            log.warning("judge prompt of %d tokens cut to the model's %d", len(ids), self.engine.context_length)
        return keep_the_end(ids, self.engine.context_length)

    def last_logits(self, turns: list[tuple[str, str]]) -> np.ndarray:
        return self.engine.last_logits(self._prompt_ids(turns))

    def label_ids(self, label: str) -> int:
        ids = self.engine.encode(label)
        if len(ids) != 1:
            log.warning("label %r is %d tokens for %s: its first one stands for it", label, len(ids), self.name)
        return ids[0]

    def label_logprobs(self, turns: list[tuple[str, str]], labels: tuple[str, ...]) -> dict[str, float]:
        values = log_softmax_at(self.last_logits(turns), [self.label_ids(label) for label in labels])
        return dict(zip(labels, values, strict=True))

    def top_logprobs(self, turns: list[tuple[str, str]], k: int) -> list[tuple[str, float]]:
        """The k likeliest next tokens and their log-probabilities (what an OpenAI-style server returns)."""
        logits = self.last_logits(turns)
        top = np.argsort(logits)[::-1][:k]
        return [(self.engine.decode([int(i)]), lp) for i, lp in zip(top, log_softmax_at(logits, top.tolist()),
                                                                    strict=True)]

    def close(self) -> None:
        self.engine.close()
