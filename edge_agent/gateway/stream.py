"""Stream chunks of one answer into text deltas in order: late, duplicated or missing chunks handled. Pure."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class ChunkAssembler:
    """Releases `delta`s in index order (0, 1, 2, ...), each once, however the chunks arrive.

    Chunks can be re-delivered or overtake each other after a reconnect (QoS 1 across bridges), or never come
    (an agent without streaming): `finish(response)` returns whatever of the final answer was not streamed yet.
    """

    def __init__(self) -> None:
        self._next = 0
        self._waiting: dict[int, str] = {}
        self._released: list[str] = []

    @property
    def next_index(self) -> int:
        return self._next

    @property
    def text(self) -> str:
        return "".join(self._released)

    def add(self, index: int, delta: str) -> list[str]:
        """The deltas that can go out now (possibly none: a gap before `index`, or a duplicate)."""
        if index < self._next or index in self._waiting:
            return []
        self._waiting[index] = delta
        out = []
        while self._next in self._waiting:
            out.append(self._waiting.pop(self._next))
            self._next += 1
        self._released.extend(out)
        return out

    def finish(self, response: str) -> str:
        """The rest of the final `response` after what was released; the final answer is the reference."""
        sent = self.text
        if response.startswith(sent):
            return response[len(sent):]
        log.warning("streamed text (%d chars) is not a prefix of the final answer (%d chars); nothing more sent",
                    len(sent), len(response))
        return ""
