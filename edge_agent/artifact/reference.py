"""The reference a tuned build is checked against: fixed token ids and the portable graph's logits after prefixes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InferenceError


@dataclass(frozen=True)
class ReferenceLogits:
    ids: np.ndarray  # int64 [T]: the fixed text
    lengths: np.ndarray  # int64 [P]: the prefixes checked
    logits: np.ndarray  # float32 [P, vocab]: after the last token of each prefix

    @classmethod
    def fixed_ids(cls, vocab: int, tokens: int = 32, seed: int = 13) -> np.ndarray:
        """The fixed text: seeded token ids (the check compares two graphs' arithmetic, not their prose)."""
        return np.random.default_rng(seed).integers(0, vocab, size=tokens, dtype=np.int64)

    def write(self, path: Path) -> None:
        with open(path, "wb") as file:
            np.savez(file, ids=self.ids, lengths=self.lengths, logits=self.logits.astype(np.float32))

    @classmethod
    def read(cls, path: Path) -> ReferenceLogits:
        try:
            with np.load(path) as data:
                return cls(data["ids"], data["lengths"], data["logits"])
        except (OSError, KeyError, ValueError) as exc:
            raise InferenceError(f"cannot read the reference logits {path}: {exc}") from exc


def mean_kl(reference: np.ndarray, logits: np.ndarray) -> float:
    """Mean over rows of KL(softmax(reference) || softmax(logits)), in nats."""

    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        x = x - x.max(axis=-1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))

    ref, ours = log_softmax(reference), log_softmax(logits)
    return float((np.exp(ref) * (ref - ours)).sum(axis=-1).mean())
