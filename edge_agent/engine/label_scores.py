"""Reading a model's next-token probabilities of a few labels (a judge's `m`/`M`, a rating's digits): no decode."""

from __future__ import annotations

import math

import numpy as np

from .base import LabelScores

__all__ = ["LabelScores", "keep_the_end", "log_softmax_at"]


def log_softmax_at(logits: np.ndarray, ids: list[int]) -> list[float]:
    """log p(id) for each id under softmax(logits), computed stably."""
    logits = np.asarray(logits, dtype=np.float64)
    top = float(logits.max())
    log_z = top + math.log(float(np.exp(logits - top).sum()))
    return [float(logits[i]) - log_z for i in ids]


def keep_the_end(ids: list[int], context_length: int) -> list[int]:
    """A prompt cut to leave one slot free, keeping its end: the question and the reply slot are there."""
    return ids if len(ids) < context_length else ids[-(context_length - 1):]
