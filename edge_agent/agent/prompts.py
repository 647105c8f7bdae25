"""The intake and admission steps of a user's prompt: validate and route it, tell a repeat from a new one, tokenize it
off the loop, admit it against the memory cap, journal it, acknowledge it, start its run; or refuse it, once."""

from __future__ import annotations

import logging
import time

from ..engine import ChatMessage, GenerationRequest
from ..errors import InferenceError, ProtocolError, Refusal, TooLargeError
from ..mqtt.api import RawMessage
from ..wire.messages import (
    ReplyRoute,
    UserRequest,
    best_effort_route,
)
from .intake import read_prompt, route_of
from .replies import Stream

log = logging.getLogger(__name__)


class PromptSteps:
    """The agent's handling of its own users' prompts (a part of `Agent`, which owns the state)."""

    def _refuse_unreadable(self, message: RawMessage, code: str, text: str) -> None:
        """An error reply for a prompt that failed before a route was fixed, if the message names one."""
        parsed = self.topics.parse(message.topic)
        if parsed is None or parsed[1] != "prompt" or parsed[0] != self.device:
            return
        try:
            route = best_effort_route(message.payload, message.response_topic, message.correlation_data,
                                      lambda rid: self.topics.answer(self.device, rid))
            if route is not None:
                self.replies.refuse(route, code, text)
        except Exception:
            log.exception("could not send the error for a message on %s", message.topic)

    def _reject_oversized(self, kind: str, device: str, message: RawMessage) -> None:
        limit = self.config.limits.max_payload_bytes
        log.warning("refused %d-byte payload on %s (limit %d)", len(message.payload), message.topic, limit)
        if kind == "prompt" and device == self.device:
            route = best_effort_route(b"", message.response_topic, message.correlation_data,
                                      lambda rid: self.topics.answer(self.device, rid))
            if route:
                self.replies.refuse(route, "too_large", f"payload of {len(message.payload)} bytes exceeds {limit}")

    def _on_prompt(self, message: RawMessage) -> bool:
        """Validate and route a prompt, then tokenize it off the loop; True: held until admission decides."""
        try:
            request = read_prompt(message, device=self.device, topics=self.topics, moa=self.config.moa,
                                  limits=self.config.limits, received_at=time.time())
            route = route_of(request)
            if self._is_repeat(request, route, message):
                return False
            if request.aggregation == "select" and request.select_ranker == "pairwise" and \
                    self._pairwise_template is None:
                raise Refusal(route, "invalid_request", "select_ranker pairwise: this agent has no AlpacaEval "
                                                        "judge template (moa.pairwise_template_file); use pointwise")
            if not self._healthy():
                raise Refusal(route, "unavailable", f"this agent's engine has not finished an inference for "
                                                    f"{self.worker.busy_for_s():.0f}s; try another board")
        except (ProtocolError, TooLargeError) as exc:
            self._refuse_unroutable(message, exc)
            return False
        except Refusal as refusal:
            self._refuse(refusal)
            return False
        generation = GenerationRequest(messages=(ChatMessage("user", request.prompt),),
                                       max_new_tokens=request.max_new_tokens)
        self._intake.add(request.request_id)
        self.tokenizer.ids(generation.messages,
                           then=lambda ids: self._admit_prompt(message, request, route, generation, ids),
                           failed=lambda exc: self._intake_failed(message, request, route, exc))
        return True

    def _admit_prompt(self, message: RawMessage, request: UserRequest, route: ReplyRoute,
                      generation: GenerationRequest, ids: tuple[int, ...]) -> None:
        """Context, memory charge and the journal; only then the broker's acknowledgement, then the run."""
        self._intake.discard(request.request_id)
        try:
            if len(ids) + request.max_new_tokens > self.engine.context_length:
                raise Refusal(route, "too_large", f"prompt ({len(ids)} tokens) + max_new_tokens "
                                                  f"({request.max_new_tokens}) exceed the model's context of "
                                                  f"{self.engine.context_length} tokens")
            if not self.admission.admits(self.admission.charge(generation, len(ids))):
                raise Refusal(route, "queue_full", f"queue full ({self.admission.describe()}); try again later")
            request = request.model_copy(update={"prompt_tokens": len(ids)})
            if not self.journal.accept(request):
                raise Refusal(route, "invalid_request", f"request_id {request.request_id} was already accepted")
        except Refusal as refusal:
            self._refuse(refusal)
            self._ack(message)
            return
        self._ack(message)
        run = self._new_run(request, remaining_s=request.deadline_at - request.received_at)
        self.runs[request.request_id] = run
        if request.stream:
            self._streams[request.request_id] = Stream(route)
        log.info("accepted %s: M=%d k=%d", request.request_id, request.layers, request.proposers)
        self._execute(run, run.start(self._alive(), self.rng, time.monotonic()))

    def _intake_failed(self, message: RawMessage, request: UserRequest, route: ReplyRoute, exc: Exception) -> None:
        """Tokenizing or admitting this prompt failed: one error, unless it was accepted (then its run answers)."""
        self._intake.discard(request.request_id)
        log.warning("admitting %s failed: %r", request.request_id, exc, exc_info=exc)
        if request.request_id not in self.runs and not self.journal.in_progress(request.request_id):
            code = exc.code if isinstance(exc, InferenceError) else "internal"
            self.replies.refuse(route, code, f"the agent could not admit this prompt: {exc}"[:300])
        self._ack(message)

    def _refuse(self, refusal: Refusal) -> None:
        log.warning("refused prompt %s: %s", refusal.route.request_id, refusal.message)
        self._observe("observe_refusal", refusal.code)
        self.replies.refuse(refusal.route, refusal.code, refusal.message)

    def _refuse_unroutable(self, message: RawMessage, exc: ProtocolError | TooLargeError) -> None:
        route = best_effort_route(message.payload, message.response_topic, message.correlation_data,
                                  lambda rid: self.topics.answer(self.device, rid))
        log.warning("refused prompt (%s): %s; payload %r", exc.code, exc, message.payload[:200])
        self._observe("observe_refusal", exc.code)
        if route:
            self.replies.refuse(route, exc.code, str(exc))

    def _is_repeat(self, request: UserRequest, route: ReplyRoute, message: RawMessage) -> bool:
        """A request id seen before: in flight -> nothing more (its one answer comes); finished -> the stored
        answer again on this route, unless the broker merely re-delivered the very message we answered."""
        rid = request.request_id
        if rid in self.runs or rid in self._intake or self.journal.in_progress(rid):
            log.info("request %s repeated while in progress: its answer will come once", rid)
            return True
        stored = self.journal.reply(rid)
        if stored is None:
            return False
        if message.dup and stored.sent:
            log.info("request %s re-delivered by the broker after it was answered: not answered twice", rid)
        elif stored.sent:
            log.info("request %s repeated after it finished: the stored answer again", rid)
            self.replies.repeat(route, stored.payload)
        else:
            log.info("request %s repeated: its stored answer is on its way", rid)
        return True
