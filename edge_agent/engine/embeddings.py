"""The token table kept outside the graph, memory-mapped and dequantized a few rows at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InferenceError


class MappedEmbeddings:
    """The token table read from disk as used: SmolLM2's 49k x 576 Q8_0 table (28 MB) is never loaded whole.

    Rows are `q * d` per block of 32 in float32, what GatherBlockQuantized computes inside the graph.
    """

    def __init__(self, model_dir: Path, files: tuple[str, ...]):
        try:
            self._q = np.load(model_dir / files[0], mmap_mode="r")  # int8 [vocab, hidden]
            self._scales = np.load(model_dir / files[1], mmap_mode="r")  # float16 [vocab, hidden / 32]
        except (OSError, ValueError, IndexError) as exc:
            raise InferenceError(f"cannot map the token table of {model_dir}: {exc}") from exc

    def rows(self, ids: np.ndarray) -> np.ndarray:
        q = np.asarray(self._q[ids.reshape(-1)], dtype=np.float32)
        scales = np.asarray(self._scales[ids.reshape(-1)], dtype=np.float32)
        rows = q.reshape(len(q), scales.shape[1], -1) * scales[..., None]
        return rows.reshape(*ids.shape, q.shape[1])
