"""Prompt prefixes' KV kept between requests, so a prompt that starts as an earlier one skips that part's prefill.

Every synthesis of a mesh starts with the same ~130 tokens (the chat template and the synthesis system prompt),
every pointwise ranking of a prompt's proposals with the same template and instruction: prefill that one board
otherwise repeats for each task, and prefill does not batch (docs/stability.md 6g).

Exact by construction: a prompt is prefilled in chunks at fixed offsets (batch.prefill_chunks), so the KV of
its first `s` tokens, for `s` the start of one of its pieces, is a function of those tokens alone. Only such
prefixes are kept and only at such starts are they taken up again: a row resumed from a kept prefix holds the
very values it would have computed, and its tokens equal a run without the cache (tested).

A prefix is kept the second time it is seen (a one-off prompt costs a hash, not a copy), least recently used
first out, within a byte budget that the cache never exceeds.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

SEEN_LIMIT = 4096  # prefix hashes remembered for the second-sight rule


@dataclass
class PrefixStats:
    hits: int = 0  # prompts that resumed from a kept prefix
    tokens_reused: int = 0  # prompt tokens not prefilled thanks to it
    kept: int = 0  # prefixes stored so far
    evicted: int = 0


class PrefixCache:
    def __init__(self, budget_bytes: int):
        if budget_bytes < 0:
            raise ValueError(f"the prefix cache budget must be >= 0 bytes, not {budget_bytes}")
        self.budget_bytes = budget_bytes
        self._kept: OrderedDict[tuple[int, ...], list[np.ndarray]] = OrderedDict()
        self._seen: OrderedDict[int, None] = OrderedDict()
        self.nbytes = 0
        self.stats = PrefixStats()

    def __len__(self) -> int:
        return len(self._kept)

    def longest(self, ids: list[int], starts: list[int]) -> tuple[int, list[np.ndarray]] | None:
        """The longest kept prefix ids[:s] for `s` among `starts` (piece starts of this prompt, 0 excluded), with
        its per-array KV (kv_heads, s, head_dim); None if none is kept."""
        for start in sorted((s for s in starts if s > 0), reverse=True):
            arrays = self._kept.get(tuple(ids[:start]))
            if arrays is not None:
                self._kept.move_to_end(tuple(ids[:start]))
                self.stats.hits += 1
                self.stats.tokens_reused += start
                return start, arrays
        return None

    def wants(self, ids: list[int], end: int) -> bool:
        """Whether ids[:end] should be kept now (seen before, not kept yet, fits the budget at all); marks it seen."""
        if not self.budget_bytes:
            return False
        key = tuple(ids[:end])
        if key in self._kept:
            return False
        digest = hash(key)
        if digest in self._seen:
            return True
        self._seen[digest] = None
        if len(self._seen) > SEEN_LIMIT:
            self._seen.popitem(last=False)
        return False

    def keep(self, ids: list[int], end: int, arrays: list[np.ndarray]) -> None:
        """Store the KV of ids[:end] (copies the caller no longer touches), evicting the least recently used."""
        size = sum(array.nbytes for array in arrays)
        if size > self.budget_bytes:
            return
        while self.nbytes + size > self.budget_bytes:
            _, old = self._kept.popitem(last=False)
            self.nbytes -= sum(array.nbytes for array in old)
            self.stats.evicted += 1
        self._kept[tuple(ids[:end])] = arrays
        self.nbytes += size
        self.stats.kept += 1

    def clear(self) -> None:
        self._kept.clear()
        self._seen.clear()
        self.nbytes = 0
