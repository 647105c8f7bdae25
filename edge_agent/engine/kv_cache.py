"""KV caches: rows of one preallocated buffer that GQA appends to in place, or the classic past -> present loop.

`RowKvCache` holds up to `max_rows` sequences, each in its own row of a (rows, kv_heads, capacity, head_dim) array
per past/present pair. A row is prefilled alone, bound to its own slice of the buffer (no padded prefill: its cache
and logits are bit-identical to a solo run), and a decode step feeds one token to each of the rows [0, n) with a
right-padded attention_mask: GQA takes each row's length from its mask (seqlens_k = row sum - 1), writes the new
key/value at that slot and attends to that row's slots only (onnxruntime GroupQueryAttention, CPU, shared
past/present buffer). Live rows stay packed at the front, so a row that leaves is replaced by the last one (its
filled slots copied) and the next newcomer reuses the freed memory.
"""

from __future__ import annotations

import numpy as np

from .session import Graph

CAPACITY_STEP = (
    128  # slots: the buffer grows (and is charged) in these steps, so a newcomer rarely regrows it
)


def round_capacity(tokens: int) -> int:
    return -(-tokens // CAPACITY_STEP) * CAPACITY_STEP


class RowKvCache:
    def __init__(self, graph: Graph, num_kv_heads: int, head_dim: int, max_rows: int):
        self._graph = graph
        self._shape = (max_rows, num_kv_heads, 0, head_dim)
        self._arrays: list[np.ndarray] = []
        self._bindings: dict[int, tuple] = {}  # rows -> (binding of the rows [0, rows), its logits buffer)

    @property
    def capacity(self) -> int:
        return self._shape[2]

    @property
    def nbytes(self) -> int:
        """Bytes of the buffer (all rows; untouched rows are not resident until a row is first used)."""
        return sum(array.nbytes for array in self._arrays)

    def reserve(self, tokens: int, filled: list[int]) -> None:
        """Make every row hold at least `tokens` slots, keeping the first `filled[r]` slots of row r."""
        if tokens <= self.capacity:
            return
        rows, heads, _, dim = self._shape
        capacity = round_capacity(tokens)
        grown = []
        for array in self._arrays or [None] * len(self._graph.kv_pairs):
            new = np.zeros((rows, heads, capacity, dim), dtype=self._graph.kv_dtype)
            for row, count in enumerate(filled):
                if count:
                    new[row, :, :count] = array[row, :, :count]
            grown.append(new)
        self._arrays, self._shape, self._bindings = grown, (rows, heads, capacity, dim), {}

    def clear(self) -> None:
        """Give the whole buffer back (the batch is empty)."""
        self._arrays, self._bindings = [], {}
        self._shape = (*self._shape[:2], 0, self._shape[3])

    def move(self, source: int, target: int, filled: int) -> None:
        """Copy the first `filled` slots of row `source` into row `target`."""
        for array in self._arrays:
            array[target, :, :filled] = array[source, :, :filled]

    def snapshot(self, row: int, filled: int) -> list[np.ndarray]:
        """Copies of the first `filled` slots of row `row`, one (kv_heads, filled, head_dim) array per buffer."""
        return [array[row, :, :filled].copy() for array in self._arrays]

    def restore(self, row: int, arrays: list[np.ndarray]) -> None:
        """Write a snapshot into the first slots of row `row` (the buffer must already hold them: `reserve`)."""
        for array, kept in zip(self._arrays, arrays, strict=True):
            array[row, :, : kept.shape[1]] = kept

    def prefill(self, row: int, ids: list[int], start: int, *, all_positions: bool = False) -> np.ndarray:
        """Feed `ids` to row `row` at slots start..; the logits after the last one (or after each one)."""
        binding = self._graph.bind_kv([array[row : row + 1] for array in self._arrays])
        end = start + len(ids)
        logits = self._graph.run_bound(
            binding,
            np.asarray([ids], dtype=np.int64),
            np.ones((1, end), dtype=np.int64),
            np.arange(start, end, dtype=np.int64)[None, :],
        )
        return logits[0].copy() if all_positions else logits[0, -1].copy()

    def decode(self, tokens: list[int], lengths: list[int]) -> np.ndarray:
        """One step for rows [0, len(tokens)): `tokens[r]` goes to slot `lengths[r]` of row r; logits (rows, vocab)."""
        rows = len(tokens)
        bound = self._bindings.get(rows)
        if bound is None:
            binding = self._graph.bind_kv([array[:rows] for array in self._arrays])
            bound = self._bindings[rows] = (binding, self._graph.logits_buffer(binding, rows))
        binding, buffer = bound
        width = max(lengths) + 1
        mask = (np.arange(width)[None, :] <= np.asarray(lengths)[:, None]).astype(np.int64)
        logits = self._graph.run_bound(
            binding,
            np.asarray(tokens, dtype=np.int64)[:, None],
            mask,
            np.asarray(lengths, dtype=np.int64)[:, None],
            buffer,
        )
        return logits[:, -1]


class ConcatKvCache:
    """The classic loop for one sequence: each run's present is the next run's past (graphs without GQA)."""

    def __init__(self, graph: Graph, num_kv_heads: int, head_dim: int):
        self._graph = graph
        empty = np.zeros((1, num_kv_heads, 0, head_dim), dtype=graph.kv_dtype)
        self._past = {past: empty for past, _ in graph.kv_pairs}

    def run(self, ids: list[int], start: int, *, all_positions: bool = False) -> np.ndarray:
        end = start + len(ids)
        logits, self._past = self._graph.run_fed(
            np.asarray([ids], dtype=np.int64),
            self._past,
            np.ones((1, end), dtype=np.int64),
            np.arange(start, end, dtype=np.int64)[None, :],
        )
        return logits[0] if all_positions else logits[0, -1]
