"""The agent daemon's loop: owns the queue, the peer table and the MoA runs; carries out what they decide.

Three contexts, one owner each: paho's network thread only hands raw messages to this loop; this loop decides
and publishes; one inference thread runs the engine.
"""

from __future__ import annotations

import asyncio
import logging
import random
import statistics
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from . import __version__
from .config import AgentConfig
from .engine import ChatMessage, Engine, Generation, GenerationRequest
from .errors import EdgeMoaError, InferenceError, ProtocolError, TooLargeError, TransportError
from .intake import Refusal, read_prompt
from .journal import Journal
from .memory import MemoryProbe, queue_cap_bytes, task_charge_bytes
from .moa import Finish, LayerDone, MoaRun, MoaTimeouts, RunLocal, SendTask
from .peers import PeerTable
from .prompt_queue import PromptQueue, QueuedTask, admit
from .protocol import (
    Answer,
    ErrorAnswer,
    ErrorBody,
    ReplyRoute,
    ResultMessage,
    Status,
    TaskAckMessage,
    TaskMessage,
    UserRequest,
    best_effort_route,
    decode_internal,
    decode_status,
    encode,
)
from .topics import Topics
from .transport import PahoTransport, RawMessage, Will

log = logging.getLogger(__name__)
TransportFactory = Callable[..., PahoTransport]
TICK_S = 0.2
DISCOVERY_S = 0.5  # how long a starting agent listens to statuses before it picks proposers


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


class Agent:
    def __init__(self, *, config: AgentConfig, engine: Engine, journal: Journal, memory: MemoryProbe,
                 transport_factory: TransportFactory, rng: random.Random | None = None):
        self.config = config
        self.device = config.agent.device_id
        self.engine = engine
        self.journal = journal
        self.memory = memory
        self.topics = Topics(config.mqtt.topic_root)
        self.peers = PeerTable(self.device, config.agent.peer_timeout_s)
        self.queue = PromptQueue()
        self.runs: dict[str, MoaRun] = {}
        self.rng = rng or random.Random()
        self.alpha_s: float | None = None
        self._transport_factory = transport_factory
        self._transport: PahoTransport | None = None
        self._seen = SeenIds()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self._busy = False
        # Batching needs an engine that can (generate_batch); the config may ask for less than it offers.
        self._max_batch = max(1, min(config.engine.max_batch, getattr(engine, "max_batch", 1)))
        self._latencies: deque[float] = deque(maxlen=100)
        self._counts = {"answered": 0, "failed": 0, "served": 0}
        self._discovering = True
        self._early_prompts: list[RawMessage] = []
        self._started = time.monotonic()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        moa = config.moa
        self._timeouts = MoaTimeouts(ack_s=moa.ack_timeout_s, grace_s=moa.task_grace_s,
                                     request_s=moa.request_timeout_s, max_redispatch=moa.max_redispatch)

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        offline = encode(Status(device=self.device, online=False, version=__version__))
        self._transport = self._transport_factory(
            client_id=f"edge-moa-agent-{self.device}",
            on_message=lambda m: self._loop.call_soon_threadsafe(self._on_raw, m),
            on_connection=lambda up: self._loop.call_soon_threadsafe(self._on_connection, up),
            will=Will(topic=self.topics.status(self.device), payload=offline, retain=True),
        )
        for topic in (self.topics.prompt(self.device), self.topics.my_inbox(self.device), self.topics.all_status()):
            self._transport.subscribe(topic, self.config.mqtt.qos)
        await self._connect_with_retry()
        self._publish_status()
        # Peers' retained statuses arrive right after subscribing: learn who is alive before choosing proposers.
        self._loop.call_later(DISCOVERY_S, self._end_discovery)
        tasks = [asyncio.create_task(self._every(self.config.agent.heartbeat_s, self._publish_status)),
                 asyncio.create_task(self._every(TICK_S, self._tick))]
        log.info("agent %s live (model %s, topic root %s)", self.device, self.engine.model_id, self.topics.root)
        await self._stop.wait()
        for task in tasks:
            task.cancel()
        self._transport.publish(self.topics.status(self.device), offline, qos=1, retain=True)
        await asyncio.sleep(0.1)
        self._transport.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.journal.close()

    def stop(self) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)

    async def _connect_with_retry(self) -> None:
        delay = 0.5
        while True:
            try:
                await asyncio.get_running_loop().run_in_executor(None, self._transport.connect)
                return
            except TransportError as exc:
                if not exc.retryable:
                    raise
                log.warning("%s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.mqtt.reconnect_max_s)

    async def _every(self, period_s: float, action: Callable[[], None]) -> None:
        while True:
            await asyncio.sleep(period_s)
            try:
                action()
            except Exception:  # a periodic job must never kill the agent
                log.exception("periodic %s failed", getattr(action, "__name__", action))

    def _on_connection(self, up: bool) -> None:
        if up:
            self._publish_status()

    # ------------------------------------------------------------------ inbound
    def _on_raw(self, message: RawMessage) -> None:
        parsed = self.topics.parse(message.topic)
        if parsed is None:
            return
        device, kind, extra = parsed
        if len(message.payload) > self.config.limits.max_payload_bytes:
            self._reject_oversized(kind, device, message)
            return
        try:
            if kind == "status":
                self._on_status(message)
            elif kind == "prompt" and device == self.device:
                if self._discovering:
                    self._early_prompts.append(message)
                else:
                    self._on_prompt(message)
            elif kind == "inbox" and device == self.device and extra:
                self._on_internal(extra, message)
        except ProtocolError as exc:
            log.warning("bad %s message on %s: %s; payload %r", kind, message.topic, exc, message.payload[:200])
        except EdgeMoaError as exc:
            log.error("handling %s failed: %s", message.topic, exc)

    def _reject_oversized(self, kind: str, device: str, message: RawMessage) -> None:
        limit = self.config.limits.max_payload_bytes
        log.warning("refused %d-byte payload on %s (limit %d)", len(message.payload), message.topic, limit)
        if kind == "prompt" and device == self.device:
            route = best_effort_route(b"", message.response_topic, message.correlation_data,
                                      lambda rid: self.topics.answer(self.device, rid))
            if route:
                self._send_error(route, "too_large", f"payload of {len(message.payload)} bytes exceeds {limit}")

    def _on_status(self, message: RawMessage) -> None:
        status = decode_status(message.payload)
        now = time.monotonic()
        if message.retain and status.sent_at:
            # A retained status may be old: count it as seen when it was sent, not when we got it.
            now -= max(0.0, time.time() - status.sent_at)
        if self.peers.update(status, now):
            log.info("peer %s went offline", status.device)
            for run in list(self.runs.values()):
                self._execute(run, run.on_peer_gone(status.device, self._alive(), self.rng, time.monotonic()))

    def _on_prompt(self, message: RawMessage) -> None:
        answer_topic = lambda rid: self.topics.answer(self.device, rid)
        try:
            request = self._accept_prompt(message)
        except (ProtocolError, TooLargeError) as exc:
            route = best_effort_route(message.payload, message.response_topic, message.correlation_data, answer_topic)
            log.warning("refused prompt (%s): %s; payload %r", exc.code, exc, message.payload[:200])
            if route:
                self._send_error(route, exc.code, str(exc))
            return
        except Refusal as refusal:
            log.warning("refused prompt %s: %s", refusal.route.request_id, refusal.message)
            self._send_error(refusal.route, refusal.code, refusal.message)
            return
        run = self._new_run(request)
        self.runs[request.request_id] = run
        log.info("accepted %s: M=%d k=%d", request.request_id, request.layers, request.proposers)
        self._execute(run, run.start(self._alive(), self.rng, time.monotonic()))

    def _accept_prompt(self, message: RawMessage) -> UserRequest:
        request = read_prompt(message, device=self.device, topics=self.topics, moa=self.config.moa,
                              limits=self.config.limits, received_at=time.time())
        route = ReplyRoute(topic=request.reply_topic, correlation_data=request.correlation_data,
                           request_id=request.request_id)
        if request.request_id in self.runs:
            raise Refusal(route, "invalid_request", f"request_id {request.request_id} is already in progress")
        generation = GenerationRequest(messages=(ChatMessage("user", request.prompt),),
                                       max_new_tokens=request.max_new_tokens)
        prompt_tokens = self.engine.count_prompt_tokens(generation.messages)
        if prompt_tokens + request.max_new_tokens > self.engine.context_length:
            raise Refusal(route, "too_large", f"prompt ({prompt_tokens} tokens) + max_new_tokens "
                                              f"({request.max_new_tokens}) exceed the model's context of "
                                              f"{self.engine.context_length} tokens")
        if not self._admit(self._charge(generation, prompt_tokens)):
            raise Refusal(route, "queue_full", f"queue full ({len(self.queue)} tasks, {self.queue.bytes} bytes "
                                               f"of a {self._cap()}-byte cap); try again later")
        if not self.journal.accept(request):
            raise Refusal(route, "invalid_request", f"request_id {request.request_id} was already accepted")
        return request

    def _on_internal(self, sender: str, message: RawMessage) -> None:
        msg = decode_internal(message.payload)
        if msg.sender != sender:
            raise ProtocolError(f"sender {msg.sender!r} does not match its topic's {sender!r}")
        if not self._seen.first_time(msg.msg_id):
            log.debug("duplicate message %s dropped", msg.msg_id)
            return
        now = time.monotonic()
        if isinstance(msg, TaskMessage):
            self._on_task(msg)
            return
        run = self.runs.get(msg.request_id)
        if run is None:
            log.debug("%s for finished request %s ignored", msg.type, msg.request_id)
            return
        if isinstance(msg, TaskAckMessage):
            self.peers.note_queue(msg.sender, msg.queue_length)
            actions = run.on_ack(msg.task_id, msg.accepted, msg.reason, msg.eta_s, self._alive(), self.rng, now)
        else:
            assert isinstance(msg, ResultMessage)
            actions = run.on_result(msg.task_id, msg.text, msg.error, msg.inference_s, self._alive(), self.rng, now)
        self._execute(run, actions)

    def _on_task(self, task: TaskMessage) -> None:
        generation = GenerationRequest(
            messages=tuple(ChatMessage(m.role, m.content) for m in task.messages),
            max_new_tokens=min(task.max_new_tokens, self.config.moa.max_new_tokens_limit),
            temperature=task.temperature, seed=self.config.engine.seed,
        )
        prompt_tokens = self.engine.count_prompt_tokens(generation.messages)
        reason = None
        if prompt_tokens + generation.max_new_tokens > self.engine.context_length:
            reason = "too_large"
        else:
            charge = self._charge(generation, prompt_tokens)
            if not self._admit(charge):
                reason = "busy"
        if reason is None:
            self.queue.push(QueuedTask(task_id=task.task_id, request_id=task.request_id, layer=task.layer,
                                       origin=task.sender, generation=generation, charge_bytes=charge,
                                       enqueued_at=time.monotonic()))
        else:
            log.info("refused task %s from %s: %s", task.task_id, task.sender, reason)
        ack = TaskAckMessage(sender=self.device, request_id=task.request_id, layer=task.layer, task_id=task.task_id,
                             accepted=reason is None, reason=reason, queue_length=len(self.queue),
                             eta_s=self._eta_s())
        self._send_internal(task.sender, ack)
        self._pump()

    # ------------------------------------------------------------------ decisions carried out
    def _execute(self, run: MoaRun, actions: list) -> None:
        for action in actions:
            if isinstance(action, SendTask):
                self.peers.note_sent(action.device)
                self._send_internal(action.device, action.task)
            elif isinstance(action, RunLocal):
                self._enqueue_own(action.task)
            elif isinstance(action, LayerDone):
                self.journal.checkpoint(run.request.request_id, action.next_layer, list(action.answers),
                                        list(action.trace))
            elif isinstance(action, Finish):
                self._finish(run, action)
        self._pump()

    def _enqueue_own(self, task: TaskMessage) -> None:
        generation = GenerationRequest(
            messages=tuple(ChatMessage(m.role, m.content) for m in task.messages),
            max_new_tokens=task.max_new_tokens, temperature=task.temperature, seed=self.config.engine.seed,
        )
        charge = self._charge(generation, self.engine.count_prompt_tokens(generation.messages))
        self.queue.push(QueuedTask(task_id=task.task_id, request_id=task.request_id, layer=task.layer,
                                   origin=self.device, generation=generation, charge_bytes=charge,
                                   enqueued_at=time.monotonic()))

    def _finish(self, run: MoaRun, finish: Finish) -> None:
        request = run.request
        self.runs.pop(request.request_id, None)
        self.journal.finish(request.request_id)
        route = ReplyRoute(topic=request.reply_topic, correlation_data=request.correlation_data,
                           request_id=request.request_id)
        if finish.error is not None:
            self._counts["failed"] += 1
            log.warning("request %s failed: %s", request.request_id, finish.error.message)
            self._send_error(route, finish.error.code, finish.error.message)
            return
        answer = Answer(
            request_id=request.request_id, device=self.device, response=finish.response or "",
            layers=request.layers, proposers=request.proposers, latency_s=round(time.time() - request.received_at, 4),
            inferences=finish.inferences, trace=list(finish.trace),
        )
        self._counts["answered"] += 1
        self._latencies.append(answer.latency_s)
        log.info("answered %s in %.2fs (%d inferences)", request.request_id, answer.latency_s, answer.inferences)
        self._reply(route, encode(answer))

    def _send_error(self, route: ReplyRoute, code: str, message: str) -> None:
        """Every refusal and failure ends here: one error on the request's reply route."""
        body = ErrorAnswer(request_id=route.request_id, device=self.device, error=ErrorBody(code=code, message=message))
        self._reply(route, encode(body))

    def _reply(self, route: ReplyRoute, payload: bytes) -> None:
        corr = bytes.fromhex(route.correlation_data) if route.correlation_data else None
        self._transport.publish(route.topic, payload, qos=self.config.mqtt.qos, correlation_data=corr)

    def _send_internal(self, device: str, message) -> None:
        self._transport.publish(self.topics.inbox(device, self.device), encode(message), qos=self.config.mqtt.qos)

    # ------------------------------------------------------------------ inference
    def _pump(self) -> None:
        """Start the next queued tasks (FCFS, up to the engine's batch size) when the inference thread is idle."""
        if self._busy or not self.queue.waiting:
            return
        batch = [self.queue.pop() for _ in range(min(self._max_batch, self.queue.waiting))]
        self._busy = True
        if len(batch) == 1:
            future = self._loop.run_in_executor(self._executor, self.engine.generate, batch[0].generation)
        else:
            future = self._loop.run_in_executor(self._executor, self.engine.generate_batch,
                                                [task.generation for task in batch])
        future.add_done_callback(lambda f, batch=batch: self._on_inference_done(batch, f))

    def _on_inference_done(self, batch: list[QueuedTask], future: asyncio.Future) -> None:
        self._busy = False
        try:
            outcomes = future.result()
        except asyncio.CancelledError:
            return
        except Exception as exc:  # noqa: BLE001  # the engine must not take the agent down; the origins hear of it
            outcomes = exc
        if len(batch) == 1 or isinstance(outcomes, Exception):
            outcomes = [outcomes] * len(batch)
        per_task_s = [o.seconds / len(batch) for o in outcomes if isinstance(o, Generation)]
        for seconds in per_task_s[:1]:  # a batch of b served b tasks in one wall time: alpha per task
            self.alpha_s = seconds if self.alpha_s is None else 0.8 * self.alpha_s + 0.2 * seconds
        for task, outcome in zip(batch, outcomes):
            self._complete(task, outcome)
        self._pump()

    def _complete(self, task: QueuedTask, outcome: Generation | Exception) -> None:
        self._counts["served"] += 1
        self.queue.release(task.task_id)
        text, error, seconds, new_tokens = None, None, 0.0, 0
        if isinstance(outcome, Generation):
            text, seconds, new_tokens = outcome.text, outcome.seconds, outcome.new_tokens
        elif isinstance(outcome, InferenceError):
            error = ErrorBody(code=outcome.code, message=str(outcome))
        else:
            log.error("inference failed: %r", outcome)
            error = ErrorBody(code="inference_failed", message=f"{type(outcome).__name__}: {outcome}")
        if task.origin == self.device:
            run = self.runs.get(task.request_id)
            if run is not None:
                self._execute(run, run.on_result(task.task_id, text, error, seconds, self._alive(), self.rng,
                                                 time.monotonic()))
        else:
            result_msg = ResultMessage(sender=self.device, request_id=task.request_id, layer=task.layer,
                                       task_id=task.task_id, text=text, error=error, inference_s=round(seconds, 4),
                                       new_tokens=new_tokens)
            self._send_internal(task.origin, result_msg)

    # ------------------------------------------------------------------ helpers
    def _new_run(self, request: UserRequest, **progress) -> MoaRun:
        moa = self.config.moa
        cost = None
        if moa.peer_policy == "speed-aware":
            cost = lambda device: self.peers.expected_wait_s(device, self.alpha_s or 1.0)
        return MoaRun(request=request, self_id=self.device, system_prompt=moa.system_prompt,
                      timeouts=self._timeouts, peer_cost=cost, peer_candidates=max(moa.peer_candidates, 1),
                      **progress)

    def _alive(self) -> list[str]:
        return self.peers.alive(time.monotonic())

    def _tick(self) -> None:
        now = time.monotonic()
        for run in list(self.runs.values()):
            self._execute(run, run.on_tick(self._alive(), self.rng, now))

    def _charge(self, generation: GenerationRequest, prompt_tokens: int) -> int:
        prompt_bytes = sum(len(m.content.encode()) for m in generation.messages)
        return task_charge_bytes(prompt_bytes, prompt_tokens, generation.max_new_tokens,
                                 self.engine.kv_bytes_per_token)

    def _cap(self) -> int:
        q = self.config.queue
        return queue_cap_bytes(self.memory.read(), fraction=q.memory_fraction, reserve_bytes=q.reserve_mb * 2**20)

    def _admit(self, charge: int) -> bool:
        return admit(self.queue.bytes, len(self.queue), charge, self._cap(), self.config.queue.max_tasks)

    def _eta_s(self) -> float:
        return (len(self.queue) + 1) * (self.alpha_s or 1.0)

    def _end_discovery(self) -> None:
        self._discovering = False
        self._resume_journal()
        for message in self._early_prompts:
            self._on_raw(message)
        self._early_prompts.clear()

    def _resume_journal(self) -> None:
        for entry in self.journal.unfinished():
            request = entry.request
            run = self._new_run(request, layer=entry.layer, previous=list(entry.answers), trace=list(entry.trace))
            self.runs[request.request_id] = run
            log.info("resuming journaled request %s at layer %d", request.request_id, entry.layer)
            self._execute(run, run.start(self._alive(), self.rng, time.monotonic()))

    def _publish_status(self) -> None:
        if self._transport is None:
            return
        reading = self.memory.read()
        q = self.config.queue
        status = Status(
            device=self.device, online=True, model_id=self.engine.model_id,
            alpha_s=round(self.alpha_s, 4) if self.alpha_s else None, queue_length=len(self.queue),
            queue_bytes=self.queue.bytes,
            queue_cap_bytes=queue_cap_bytes(reading, fraction=q.memory_fraction, reserve_bytes=q.reserve_mb * 2**20),
            memory_available_bytes=reading.available_bytes, busy=self._busy, version=__version__,
            uptime_s=round(time.monotonic() - self._started, 1), heartbeat_s=self.config.agent.heartbeat_s,
            latency_p50_s=round(statistics.median(self._latencies), 3) if self._latencies else None,
            sent_at=time.time(), **self._counts,
        )
        self._transport.publish(self.topics.status(self.device), encode(status), qos=1, retain=True)
