"""Iteration-level (continuous) batching: sequences join the decoding batch at the next step and leave when done.

Each `step()` is one decode step of every live row, then at most one prefill chunk of the next newcomer, so a
newcomer stalls the others for one chunk, never for its whole prompt (Orca, OSDI '22; vLLM's scheduler). A
finished row leaves at once: the last live row moves into its slots and the freed row is the next newcomer's.
A prompt is cut into chunks at fixed offsets whatever else runs, so a row's tokens do not depend on its company:
greedy output in a batch equals the output alone.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

from .generation import Sequence
from .kv_cache import RowKvCache
from .prefix_cache import PrefixCache

log = logging.getLogger(__name__)


def prefill_chunks(length: int, chunk: int) -> list[tuple[int, int]]:
    """(start, end) pieces of a prompt of `length` tokens, `chunk` each; a last piece of one token is merged into
    the one before (a one-token run takes the decode kernels, whose rounding differs from the prompt's)."""
    pieces = [(start, min(start + chunk, length)) for start in range(0, length, chunk)]
    if len(pieces) > 1 and pieces[-1][1] - pieces[-1][0] == 1:
        pieces[-2:] = [(pieces[-2][0], length)]
    return pieces


def resume_from_prefix(prefixes: PrefixCache | None, cache: RowKvCache, row: int, ids: list[int],
                       pieces: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The pieces still to prefill after taking up the longest kept prefix of `ids` into row `row` (whose
    buffer holds the whole prompt already); all of them when nothing is kept."""
    found = prefixes.longest(ids, [start for start, _ in pieces]) if prefixes is not None else None
    if found is None:
        return pieces
    start, arrays = found
    cache.restore(row, arrays)
    return [piece for piece in pieces if piece[0] >= start]


def offer_prefix(prefixes: PrefixCache | None, cache: RowKvCache, row: int, ids: list[int], end: int) -> None:
    """After a piece ending at `end` (not the prompt's last): keep ids[:end]'s KV if the cache wants it."""
    if prefixes is not None and end < len(ids) and prefixes.wants(ids, end):
        prefixes.keep(ids, end, cache.snapshot(row, end))


@dataclass(eq=False)
class Entry:
    """A sequence in the batch, with what its caller needs back (`tag`: the caller's own object)."""

    seq: Sequence
    tag: object = None
    chunks: list[tuple[int, int]] = field(default_factory=list)  # prefill pieces not yet run
    reused: int = 0  # prompt tokens taken from a kept prefix, not prefilled


class ContinuousBatch:
    def __init__(self, cache: RowKvCache, *, max_rows: int, prefill_chunk: int,
                 prefixes: PrefixCache | None = None):
        self._cache = cache
        self._prefixes = prefixes
        self.max_rows = max_rows
        self._chunk = prefill_chunk
        self._rows: list[Entry] = []  # live rows, entry i in KV row i
        self._joining: deque[Entry] = deque()  # the first one is prefilled in KV row len(self._rows)

    def __len__(self) -> int:
        return len(self._rows) + len(self._joining)

    @property
    def decoding(self) -> int:
        return len(self._rows)

    @property
    def kv_bytes(self) -> int:
        return self._cache.nbytes

    @property
    def free_rows(self) -> int:
        return self.max_rows - len(self)

    def add(self, seq: Sequence, tag: object = None) -> Entry:
        if self.free_rows <= 0:
            raise ValueError("the batch is full")
        entry = Entry(seq, tag, prefill_chunks(len(seq.prompt_ids), self._chunk))
        self._joining.append(entry)
        return entry

    def drop_all(self) -> list[Entry]:
        """Every entry out (a runtime failure): the caller fails them; the buffer is given back."""
        entries = self._rows + list(self._joining)
        self._rows, self._joining = [], deque()
        self._cache.clear()
        return entries

    def step(self) -> list[Entry]:
        """One decode step of the live rows, then one prefill chunk; the entries that finished in it."""
        finished: list[Entry] = []
        if self._rows:
            logits = self._cache.decode(
                [e.seq.out[-1] for e in self._rows], [e.seq.length for e in self._rows]
            )
            ended = [i for i, entry in enumerate(self._rows) if not entry.seq.choose(logits[i])]
            for i in reversed(ended):  # from the back, so each move fills a hole with a row still live
                finished.append(self._leave(i))
            finished.reverse()
        if self._joining:
            entry, row = self._joining[0], len(self._rows)
            ids = entry.seq.prompt_ids
            if not entry.chunks[0][0]:  # its first chunk: make room for all of it, take up a kept prefix
                self._cache.reserve(self._need(), self._filled())
                entry.chunks = resume_from_prefix(self._prefixes, self._cache, row, ids, entry.chunks)
                entry.reused = entry.chunks[0][0]
            start, end = entry.chunks.pop(0)
            logits = self._cache.prefill(row, ids[start:end], start)
            offer_prefix(self._prefixes, self._cache, row, ids, end)
            if not entry.chunks:
                self._joining.popleft()
                if entry.seq.choose(logits):
                    self._rows.append(entry)
                else:
                    finished.append(entry)
        if not self:
            self._cache.clear()
        return finished

    def _leave(self, row: int) -> Entry:
        entry, last = self._rows[row], len(self._rows) - 1
        if row != last:
            self._cache.move(last, row, self._rows[last].seq.length)
            self._rows[row] = self._rows[last]
        self._rows.pop()
        if self._joining and self._joining[0].chunks and self._joining[0].chunks[0][0]:
            # a newcomer half prefilled in the row after the last live one: it follows them down
            self._cache.move(last + 1, last, self._joining[0].chunks[0][0])
        return entry

    def _need(self) -> int:
        """Slots each row must hold: the most any row in the batch or the next newcomer can fill."""
        return max(e.seq.capacity for e in [*self._rows, self._joining[0]])

    def _filled(self) -> list[int]:
        filled = [e.seq.length for e in self._rows]
        head = self._joining[0] if self._joining else None
        if head is not None and head.chunks and head.chunks[0][0]:
            filled.append(head.chunks[0][0])
        return filled
