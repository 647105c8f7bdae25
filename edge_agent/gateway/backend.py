"""The gateway's MQTT side: one MoaClient, answers and stream chunks handed to asyncio, the mesh's statuses kept."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import Future
from dataclasses import dataclass

from ..mqtt.client import MoaClient
from ..wire.messages import Status, new_id
from .stream import ChunkAssembler

log = logging.getLogger(__name__)
MAX_CHUNK_LEAD = 4096  # a chunk this far ahead of the next expected index is not buffered (bounded memory)
HISTORY_S = 600.0  # the mesh page's chart window
STREAM_RETRY_S = 300.0  # after an agent refused `stream`, ask it without for this long, then try again


class BrokerUnavailable(Exception):
    """The gateway is not connected to its broker right now."""


class AnswerTimeout(Exception):
    """No answer within the gateway's timeout."""


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Final:
    answer: dict  # the agent's answer or error JSON


class MeshWatch:
    """The retained statuses of every agent under the root, and a short history per agent for the chart."""

    def __init__(self, history_s: float = HISTORY_S, max_points: int = 1200):
        self.history_s = history_s
        self._history: dict[str, deque[tuple[float, int | None, float | None]]] = {}
        self._max_points = max_points
        self.statuses: dict[str, Status] = {}

    def add(self, status: Status, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.statuses[status.device] = status
        points = self._history.setdefault(status.device, deque(maxlen=self._max_points))
        points.append((now, status.queue_length, status.latency_p50_s))
        while points and points[0][0] < now - self.history_s:
            points.popleft()

    def snapshot(self, now: float | None = None) -> dict:
        now = time.time() if now is None else now
        return {
            "now": now,
            "history_s": self.history_s,
            "agents": [s.model_dump(exclude_none=True) for _, s in sorted(self.statuses.items())],
            "history": {device: [{"t": t, "queue_length": q, "latency_p50_s": p} for t, q, p in points
                                 if t >= now - self.history_s]
                        for device, points in sorted(self._history.items())},
        }


class GatewayBackend:
    """Asks the gateway's board over MQTT; async iterators of Delta ... Final for the HTTP side."""

    def __init__(self, client: MoaClient, device: str, *, timeout_s: float = 300.0):
        self.client = client
        self.device = device
        self.timeout_s = timeout_s
        self.mesh = MeshWatch()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._no_stream_until = 0.0  # monotonic time until which the agent is asked without `stream`

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Subscribe once to the device's answers and to every status (call from the running loop)."""
        self._loop = loop
        self.client.listen_answers(self.device)
        self.client.watch_status(lambda status: loop.call_soon_threadsafe(self.mesh.add, status))

    @property
    def connected(self) -> bool:
        return self.client.connected

    def device_status(self) -> Status | None:
        return self.mesh.statuses.get(self.device)

    async def ask(self, prompt: str, options: dict, *, stream: bool) -> AsyncIterator[Delta | Final]:
        """Yields text deltas (when streaming) and then the one Final; raises BrokerUnavailable / AnswerTimeout."""
        if not self.client.connected:
            raise BrokerUnavailable("the gateway is not connected to its broker")
        want_stream = stream and time.monotonic() >= self._no_stream_until
        events, future = self._submit(prompt, options, want_stream)
        assembler = ChunkAssembler()
        deadline = time.monotonic() + self.timeout_s
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AnswerTimeout(f"no answer from {self.device} within {self.timeout_s:g}s")
                try:
                    kind, data = await asyncio.wait_for(events.get(), remaining)
                except asyncio.TimeoutError:
                    raise AnswerTimeout(f"no answer from {self.device} within {self.timeout_s:g}s") from None
                if kind == "chunk":
                    for text in self._chunk_deltas(assembler, data):
                        if stream:
                            yield Delta(text)
                    continue
                if want_stream and _refuses_stream_field(data) and not assembler.text:
                    # An agent older than the streaming contract: ask again without `stream` (docs/protocol.md).
                    log.info("agent %s does not know `stream`; asking without it", self.device)
                    self._no_stream_until = time.monotonic() + STREAM_RETRY_S
                    want_stream = False
                    events, future = self._submit(prompt, options, False)
                    continue
                if stream and "error" not in data:
                    rest = assembler.finish(str(data.get("response", "")))
                    if rest:
                        yield Delta(rest)
                yield Final(data)
                return
        finally:
            future.cancel()  # forgets the request in the client when it has not been answered

    def _submit(self, prompt: str, options: dict, stream: bool) -> tuple[asyncio.Queue, Future]:
        loop = self._loop or asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        extra = {"stream": True} if stream else {}
        future = self.client.submit(
            self.device, prompt, request_id=f"gw-{new_id()[:16]}",
            on_chunk=lambda chunk: loop.call_soon_threadsafe(events.put_nowait, ("chunk", chunk)),
            **options, **extra,
        )

        def done(f: Future) -> None:
            if f.cancelled():
                return
            exc = f.exception()
            answer = {"device": self.device, "error": {"code": "invalid_response", "message": str(exc)}} if exc \
                else f.result()
            loop.call_soon_threadsafe(events.put_nowait, ("final", answer))

        future.add_done_callback(done)
        return events, future

    @staticmethod
    def _chunk_deltas(assembler: ChunkAssembler, chunk: dict) -> list[str]:
        index, delta = chunk.get("index"), chunk.get("delta")
        if not isinstance(index, int) or isinstance(index, bool) or not isinstance(delta, str) or index < 0 \
                or index > assembler.next_index + MAX_CHUNK_LEAD:
            log.warning("stream chunk ignored: %.200r", chunk)
            return []
        return assembler.add(index, delta)


def _refuses_stream_field(answer: dict) -> bool:
    error = answer.get("error") or {}
    return error.get("code") == "invalid_request" and "stream" in str(error.get("message", ""))
