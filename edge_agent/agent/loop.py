"""The agent daemon's loop: routes each message to its step and carries out what the steps decide.

The pipeline: intake and admission (`prompts.py`: validate, route, de-duplicate, tokenize off the loop, memory
charge) -> MoA run (pure state, `moa.py`) -> inference (`serving.py`, over `engine/worker.py`'s own thread) ->
replies (`replies.py`, the journal's outbox); `recovery.py` resumes the journal after a start. This module owns
the state those steps share: the runs, the peer table, the lifecycle.
Three contexts, one owner each: the transport's thread only hands raw messages to this loop; this loop owns the
runs, the peer table and the ledger; the worker's thread runs the engine. Every message from the wire is handled
inside its own guard: whatever it does, it costs that message alone.
"""

from __future__ import annotations

import asyncio
import logging
import random
import statistics
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from .. import __version__
from ..config import AgentConfig
from ..engine import Engine
from ..engine.worker import InferenceWorker
from ..errors import ProtocolError, TransportError
from ..mqtt.api import RawMessage, Transport, TransportFactory, Will
from ..wire.messages import (
    Answer,
    ErrorBody,
    Status,
    TaskAckMessage,
    TaskMessage,
    Usage,
    UserRequest,
    decode_internal,
    decode_status,
    encode,
)
from ..wire.topics import Topics
from .admission import Admission
from .ha_discovery import DiscoveryAnnouncer, Publish
from .intake import route_of
from .journal import Journal
from .metrics import AgentMetrics
from .moa import Finish, LayerDone, MoaRun, MoaTimeouts, RunLocal, RunRank, SendTask
from .peers import PeerTable, status_interval_s
from .prompts import PromptSteps
from .ranker import pairwise_template
from .recovery import RecoverySteps
from .replies import Replies, Stream, error_payload
from .serving import ServingSteps
from .tokenize import OffLoopTokenizer

log = logging.getLogger(__name__)
TICK_S = 0.2
DISCOVERY_S = 0.5  # how long a starting agent listens to statuses before it picks proposers
PRUNE_EVERY_S = 60.0


class SeenIds:
    """A bounded memory of message ids, to drop duplicates after a reconnect or a bridge loop."""

    def __init__(self, size: int = 20000):
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def first_time(self, msg_id: str) -> bool:
        if msg_id in self._ids:
            return False
        self._ids[msg_id] = None
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)
        return True


class Agent(PromptSteps, ServingSteps, RecoverySteps):
    def __init__(self, *, config: AgentConfig, engine: Engine, journal: Journal, admission: Admission,
                 worker: InferenceWorker, transport_factory: TransportFactory, metrics: AgentMetrics | None = None,
                 rng: random.Random | None = None):
        self.config = config
        self.device = config.agent.device_id
        self.engine = engine
        self.journal = journal
        self.admission = admission
        self.worker = worker
        self.metrics = metrics
        self.topics = Topics(config.mqtt.topic_root)
        ha = config.home_assistant
        self.discovery = DiscoveryAnnouncer(self.device, engine.model_id, __version__,
                                            self.topics.status(self.device), prefix=ha.prefix) if ha.enabled else None
        self.peers = PeerTable(self.device, config.agent.peer_timeout_s)
        self.runs: dict[str, MoaRun] = {}
        self.rng = rng or random.Random()
        self.alpha_s: float | None = None
        self.transport: Transport | None = None
        self.replies: Replies | None = None
        self._transport_factory = transport_factory
        self._seen = SeenIds()
        self._streams: dict[str, Stream] = {}
        self._latencies: deque[float] = deque(maxlen=100)
        self.counts = {"answered": 0, "failed": 0, "served": 0}
        self._discovering = True
        self._held: list[RawMessage] = []  # prompts that arrived during discovery: acknowledged when handled
        self._intake: set[str] = set()  # request ids being tokenized for admission: a repeat counts as in flight
        self.tokenizer: OffLoopTokenizer | None = None
        self._started = time.monotonic()
        self._last_prune = 0.0
        self._published_healthy: bool | None = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        moa = config.moa
        moa = config.moa
        self._pairwise_template = pairwise_template(moa)  # None: select_ranker = pairwise is refused
        self._timeouts = MoaTimeouts(ack_s=moa.ack_timeout_s, grace_s=moa.task_grace_s,
                                     request_s=moa.request_timeout_s, max_redispatch=moa.max_redispatch)

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        if not await self.start():  # asked to stop before any broker answered: nothing to leave cleanly
            self._close_local()
            return
        await self._stop.wait()
        await self.shutdown()

    async def start(self) -> bool:
        """Connect, subscribe, re-send unacknowledged replies; discovery ends DISCOVERY_S later. False when
        `stop` came while the broker was still unreachable."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.tokenizer = OffLoopTokenizer(self.engine.prompt_ids, self._loop)
        hop = self._loop.call_soon_threadsafe
        self.transport = self._transport_factory(
            client_id=f"edge-moa-agent-{self.device}",
            on_message=lambda m: hop(self._on_raw, m),
            on_connection=lambda up: hop(self._on_connection, up),
            on_published=lambda mid: hop(self._on_published, mid),
            will=Will(topic=self.topics.status(self.device), payload=self._offline(), retain=True),
            manual_ack=True,
        )
        self.replies = Replies(device=self.device, journal=self.journal, transport=self.transport,
                               qos=self.config.mqtt.qos)
        for topic in (self.topics.prompt(self.device), self.topics.my_inbox(self.device)):
            self.transport.subscribe(topic, self.config.mqtt.qos)
        # Statuses at QoS 0 on our own link: n of them per interval, and a PUBACK each doubled the packets every
        # agent handles (issue 14 item 5). Missing one costs nothing (the next comes, retained ones come again on
        # every subscribe), and a will still arrives at once over the live connection.
        self.transport.subscribe(self.topics.all_status(), 0)
        for topic in self.discovery.subscriptions() if self.discovery else []:
            self.transport.subscribe(topic, 1)
        if not await self._connect_with_retry():
            return False
        self._publish_status()
        self.replies.resend_unsent()
        # Peers' retained statuses arrive right after subscribing: learn who is alive before choosing proposers.
        self._loop.call_later(DISCOVERY_S, self._guarded, self._end_discovery)
        self._periodic = [asyncio.create_task(self._every(self._status_interval_s, self._publish_status)),
                          asyncio.create_task(self._every(lambda: TICK_S, self._tick))]
        log.info("agent %s live (model %s, topic root %s)", self.device, self.engine.model_id, self.topics.root)
        return True

    async def shutdown(self) -> None:
        for task in self._periodic:
            task.cancel()
        self.transport.publish(self.topics.status(self.device), self._offline(), qos=1, retain=True)
        await asyncio.sleep(0.1)
        self._close_local()

    def _close_local(self) -> None:
        self.transport.close()
        self.worker.close(timeout_s=0.5)
        self.tokenizer.close()
        self.journal.close()
        if self.metrics is not None:
            self.metrics.close()

    def stop(self) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)

    def _offline(self) -> bytes:
        return encode(Status(device=self.device, online=False, version=__version__))

    async def _connect_with_retry(self) -> bool:
        """True once connected; False if `stop` came first (a SIGTERM while the broker is down must end the
        agent, not wait for a broker that may never come back)."""
        delay = 0.5
        while not self._stop.is_set():
            try:
                await asyncio.get_running_loop().run_in_executor(None, self.transport.connect)
                return True
            except TransportError as exc:
                if not exc.retryable:
                    raise
                log.warning("%s; retrying in %.1fs", exc, delay)
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                except asyncio.TimeoutError:
                    pass
                delay = min(delay * 2, self.config.mqtt.reconnect_max_s)
        return False

    async def _every(self, period_s: Callable[[], float], action: Callable[[], None]) -> None:
        while True:
            await asyncio.sleep(period_s())
            self._guarded(action)

    def _status_interval_s(self) -> float:
        """heartbeat_s, slower in a large mesh (agent.heartbeat_scale_from): the n^2 status traffic of issue 14."""
        agent = self.config.agent
        return status_interval_s(agent.heartbeat_s, len(self._alive()) + 1, agent.heartbeat_scale_from)

    def _guarded(self, action: Callable[[], None]) -> None:
        try:
            action()
        except Exception:  # a periodic job must never kill the agent
            log.exception("%s failed", getattr(action, "__name__", action))

    def _on_connection(self, up: bool) -> None:
        if up:
            self._guarded(self._publish_status)
            if self.discovery is not None:  # Home Assistant device discovery, retained, on every connect
                self._guarded(lambda: self._publish_all(self.discovery.on_connected()))

    def _publish_all(self, publishes: list[Publish]) -> None:
        for item in publishes:
            self.transport.publish(item.topic, item.payload, qos=1, retain=item.retain)

    def _on_published(self, mid: int) -> None:
        self._guarded(lambda: self.replies.on_published(mid))

    # ------------------------------------------------------------------ intake
    def _on_raw(self, message: RawMessage) -> None:
        """One message, one guard: nothing it contains reaches another message; it is acknowledged once."""
        held = False
        try:
            held = self._route(message)
        except ProtocolError as exc:
            log.warning("bad message on %s: %s; payload %r", message.topic, exc, message.payload[:200])
            self._refuse_unreadable(message, exc.code, str(exc))
        except Exception as exc:  # contained: the agent must outlive any input
            log.warning("handling a message on %s failed: %r; payload %r", message.topic, exc, message.payload[:200],
                        exc_info=True)
            self._refuse_unreadable(message, "internal", f"the agent could not handle this message: {exc!r}"[:300])
        finally:
            if not held:
                self._ack(message)

    def _ack(self, message: RawMessage) -> None:
        try:
            self.transport.ack(message)
        except Exception:
            log.exception("acknowledging a message on %s failed", message.topic)

    def _route(self, message: RawMessage) -> bool:
        """Handle a message; True when it is held (acknowledged later, when handled)."""
        parsed = self.topics.parse(message.topic)
        if parsed is None:
            if self.discovery is not None:  # Home Assistant (re)started: its discovery config again
                self._publish_all(self.discovery.on_message(message.topic, message.payload))
            return False
        device, kind, extra = parsed
        if len(message.payload) > self.config.limits.max_payload_bytes:
            self._reject_oversized(kind, device, message)
        elif kind == "status":
            self._on_status(device, message)
        elif kind == "prompt" and device == self.device:
            if self._discovering:
                self._held.append(message)
                return True
            return self._on_prompt(message)
        elif kind == "inbox" and device == self.device and extra:
            return self._on_internal(extra, message)
        return False

    def _on_status(self, device: str, message: RawMessage) -> None:
        if not message.payload:
            return  # a retained status deleted
        status = decode_status(message.payload)
        if status.device != device:
            raise ProtocolError(f"status for {status.device!r} published on {device!r}'s topic: not believed")
        if device == self.device:
            return
        now = time.monotonic()
        if message.retain and status.sent_at:
            # A retained status may be old: count it as seen when it was sent, not when we got it.
            now -= min(max(0.0, time.time() - status.sent_at), 10 * self.config.agent.peer_timeout_s)
        if self.peers.update(status, now):
            log.info("peer %s went offline", status.device)
            for run in list(self.runs.values()):
                self._execute(run, run.on_peer_gone(status.device, self._alive(), self.rng, time.monotonic()))

    def _on_internal(self, sender: str, message: RawMessage) -> bool:
        """An agent-to-agent message; True when it is held (a task: acknowledged once admission decided)."""
        msg = decode_internal(message.payload)
        if msg.sender != sender:
            raise ProtocolError(f"sender {msg.sender!r} does not match its topic's {sender!r}")
        if sender == self.device:
            raise ProtocolError("a message in our inbox claims to come from ourselves")
        if not self._seen.first_time(msg.msg_id):
            log.debug("duplicate message %s dropped", msg.msg_id)
            return False
        now = time.monotonic()
        if isinstance(msg, TaskMessage):
            return self._on_task(msg, message)
        run = self.runs.get(msg.request_id)
        if run is None:
            log.debug("%s for unknown or finished request %s ignored", msg.type, msg.request_id)
            return False
        if isinstance(msg, TaskAckMessage):
            self.peers.note_queue(msg.sender, msg.queue_length)
            actions = run.on_ack(sender, msg.task_id, msg.accepted, msg.reason, msg.eta_s, self._alive(), self.rng,
                                 now)
        else:
            actions = run.on_result(sender, msg.task_id, msg.text, msg.error, msg.inference_s, self._alive(),
                                    self.rng, now, new_tokens=msg.new_tokens if msg.text is not None else None,
                                    prompt_tokens=msg.prompt_tokens if msg.text is not None else None,
                                    cached_tokens=msg.cached_tokens if msg.text is not None else None)
        self._execute(run, actions)
        return False

    # ------------------------------------------------------------------ decisions carried out
    def _execute(self, run: MoaRun, actions: list) -> None:
        """Carry out a run's actions. If one fails, the run ends with one `internal` error (its one reply)."""
        for action in actions:
            try:
                self._carry_out(run, action)
            except Exception as exc:
                log.exception("request %s: %s failed", run.request.request_id, type(action).__name__)
                if run.request.request_id in self.runs and not isinstance(action, Finish):
                    run.finished = True
                    self._finish(run, Finish(response=None, inferences=0, trace=tuple(run.trace),
                                             error=ErrorBody(code="internal", message=f"agent failure: {exc!r}"[:300])))
                return

    def _carry_out(self, run: MoaRun, action) -> None:
        if isinstance(action, SendTask):
            self.peers.note_sent(action.device)
            self._send_internal(action.device, action.task)
        elif isinstance(action, RunLocal):
            self._enqueue_own(action.task)
        elif isinstance(action, RunRank):
            self._enqueue_rank(action)
        elif isinstance(action, LayerDone):
            self.journal.checkpoint(run.request.request_id, action.next_layer, list(action.answers),
                                    list(action.trace))
        elif isinstance(action, Finish):
            self._finish(run, action)

    def _finish(self, run: MoaRun, finish: Finish) -> None:
        request = run.request
        stream = self._streams.get(request.request_id)
        if stream is not None and finish.error is None and finish.trace and finish.trace[-1].kind == "select":
            # nothing was generated to stream: the picked proposal as one chunk
            self._guarded(lambda: self.replies.chunk(stream.route, stream.index, finish.response or ""))
        self.runs.pop(request.request_id, None)
        self._streams.pop(request.request_id, None)
        route = route_of(request)
        if finish.error is not None:
            self.counts["failed"] += 1
            self._observe("observe_failure", finish.error.code)
            log.warning("request %s failed: %s", request.request_id, finish.error.message)
            self.replies.finish(route, error_payload(self.device, route, finish.error.code, finish.error.message))
            return
        answer = Answer(
            request_id=request.request_id, device=self.device, response=finish.response or "",
            layers=request.layers, proposers=request.proposers,
            latency_s=round(max(0.0, time.time() - request.received_at), 4),
            inferences=finish.inferences, trace=list(finish.trace), usage=usage_of(request, finish),
        )
        self.counts["answered"] += 1
        self._latencies.append(answer.latency_s)
        self._observe("observe_answer", answer.latency_s, request.layers, request.proposers)
        log.info("answered %s in %.2fs (%d inferences)", request.request_id, answer.latency_s, answer.inferences)
        self.replies.finish(route, encode(answer))

    def _send_internal(self, device: str, message) -> None:
        self.transport.publish(self.topics.inbox(device, self.device), encode(message), qos=self.config.mqtt.qos)

    # ------------------------------------------------------------------ inference
    # ------------------------------------------------------------------ helpers
    def _new_run(self, request: UserRequest, *, remaining_s: float, **progress) -> MoaRun:
        moa = self.config.moa
        cost = None
        if moa.peer_policy == "speed-aware":
            cost = lambda device: self.peers.expected_wait_s(device, self.alpha_s or 1.0)
        run = MoaRun(request=request, self_id=self.device, system_prompt=moa.system_prompt,
                     timeouts=self._timeouts, peer_cost=cost, peer_candidates=max(moa.peer_candidates, 1),
                     local_eta=self._eta_s, local_healthy=self._healthy, **progress)
        run.request_deadline = time.monotonic() + remaining_s
        return run

    def _alive(self) -> list[str]:
        return self.peers.alive(time.monotonic())

    def _healthy(self) -> bool:
        return self.worker.busy_for_s() < self.config.engine.hang_timeout_s

    def _tick(self) -> None:
        now = time.monotonic()
        if self._published_healthy is not None and self._healthy() != self._published_healthy:
            self._publish_status()  # a hang (or its end) is news: peers stop sending at once, not a slow beat later
        for run in list(self.runs.values()):
            try:
                self._execute(run, run.on_tick(self._alive(), self.rng, now))
            except Exception:  # one run's failure must not stop the others' clocks
                log.exception("tick of request %s failed", run.request.request_id)
        self.journal.flush()
        if now - self._last_prune > PRUNE_EVERY_S:
            self._last_prune = now
            self.journal.prune()

    def _eta_s(self) -> float:
        """When a task sent now would be done: what we tell a peer, and our own slot's estimate. Before the first
        inference we do not know our speed and only the hang timeout bounds it (a guess of 1 s made every cold
        board's first long answer miss the requester's deadline); a peer that dies meanwhile is noticed by its
        will or its missing heartbeats, not by this deadline."""
        return (len(self.admission.ledger) + 1) * (self.alpha_s or self.config.engine.hang_timeout_s)

    def status(self) -> Status:
        reading = self.admission.memory.read()
        return Status(
            device=self.device, online=True, model_id=self.engine.model_id,
            alpha_s=round(self.alpha_s, 4) if self.alpha_s else None, queue_length=len(self.admission.ledger),
            queue_bytes=self.admission.ledger.bytes, queue_cap_bytes=self.admission.cap(reading),
            memory_available_bytes=reading.available_bytes, busy=self.worker.running > 0, healthy=self._healthy(),
            version=__version__, uptime_s=round(time.monotonic() - self._started, 1),
            heartbeat_s=round(self._status_interval_s(), 3),  # until the next one: peers' liveness timeout
            latency_p50_s=round(statistics.median(self._latencies), 3) if self._latencies else None,
            sent_at=time.time(), **self.counts,
        )

    def _publish_status(self) -> None:
        if self.transport is None:
            return
        status = self.status()
        self.transport.publish(self.topics.status(self.device), encode(status), qos=1, retain=True)
        self._published_healthy = status.healthy
        if self.metrics is not None:
            rows = self.journal.counts()
            self.metrics.set_state(queue_length=status.queue_length, queue_bytes=status.queue_bytes,
                                   queue_cap_bytes=status.queue_cap_bytes, alpha_s=status.alpha_s,
                                   peers_alive=len(self._alive()), journal_rows=rows["prompts"] + rows["stored_replies"],
                                   memory_available_bytes=status.memory_available_bytes)

    def _observe(self, method: str, *args) -> None:
        """Metrics never decide anything: a failing observation is logged and forgotten."""
        if self.metrics is not None:
            try:
                getattr(self.metrics, method)(*args)
            except Exception:
                log.exception("metrics %s failed", method)


def usage_of(request: UserRequest, finish: Finish) -> Usage:
    """OpenAI's counts: the completion is the answer's own tokens, i.e. the picked proposal's for select."""
    entries = [e for layer in finish.trace for e in layer.answered]
    last = finish.trace[-1] if finish.trace else None
    ranked = None
    if last is not None and last.kind == "select" and len(finish.trace) > 1:
        proposals = finish.trace[-2].answered
        picked = last.picked or 0
        completion = (proposals[picked].new_tokens or 0) if picked < len(proposals) else 0
        ranked = sum(e.prompt_tokens or 0 for e in last.answered)
    else:
        completion = (last.answered[0].new_tokens or 0) if last is not None and last.answered else 0
    prompt = request.prompt_tokens or 0
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                 generated_tokens=sum(e.new_tokens or 0 for e in entries), ranking_prompt_tokens=ranked)



__all__ = ["Agent"]
