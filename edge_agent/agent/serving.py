"""The worker side of the agent: peers' tasks admitted or refused, own tasks queued, the inference thread's outcomes
brought back to the loop (each guarded alone), results sent to their origin, streamed deltas published."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from ..engine import ChatMessage, Generation, GenerationRequest
from ..engine.worker import Job, ScoreJob
from ..errors import InferenceError
from ..mqtt.api import RawMessage
from ..wire.messages import (
    ErrorBody,
    ResultMessage,
    TaskAckMessage,
    TaskMessage,
)
from .moa import RunRank
from .prompt_queue import QueuedTask
from .ranker import TimedRanking, rank_job, ranking_charge_tokens

log = logging.getLogger(__name__)


class ServingSteps:
    """Inference for this agent's runs and for its peers (a part of `Agent`, which owns the state)."""

    def _on_task(self, task: TaskMessage, message: RawMessage) -> bool:
        """A peer's task: tokenized off the loop, then admitted or refused; the ack tells the peer which."""
        generation = GenerationRequest(
            messages=tuple(ChatMessage(m.role, m.content) for m in task.messages),
            max_new_tokens=min(task.max_new_tokens, self.config.moa.max_new_tokens_limit),
            temperature=task.temperature, seed=self.config.engine.seed,
        )
        if not self._healthy():
            self._answer_task(task, "unhealthy")
            return False

        def admit(ids: tuple[int, ...]) -> None:
            charge = self.admission.charge(generation, len(ids))
            reason = None
            if len(ids) + generation.max_new_tokens > self.engine.context_length:
                reason = "too_large"
            elif not self.admission.admits(charge):
                reason = "busy"
            else:
                self._submit(QueuedTask(task_id=task.task_id, request_id=task.request_id, layer=task.layer,
                                        origin=task.sender, generation=replace(generation, prompt_ids=ids),
                                        charge_bytes=charge, enqueued_at=time.monotonic()))
            self._answer_task(task, reason)
            self._ack(message)

        def failed(exc: Exception) -> None:
            log.warning("task %s from %s could not be admitted: %r", task.task_id, task.sender, exc)
            self._answer_task(task, "invalid_request")
            self._ack(message)

        self.tokenizer.ids(generation.messages, then=admit, failed=failed)
        return True

    def _answer_task(self, task: TaskMessage, reason: str | None) -> None:
        if reason is not None:
            log.info("refused task %s from %s: %s", task.task_id, task.sender, reason)
            self._observe("observe_refusal", reason)
        ack = TaskAckMessage(sender=self.device, request_id=task.request_id, layer=task.layer, task_id=task.task_id,
                             accepted=reason is None, reason=reason, queue_length=len(self.admission.ledger),
                             eta_s=min(self._eta_s(), 86400.0))
        self._send_internal(task.sender, ack)

    def _enqueue_own(self, task: TaskMessage) -> None:
        """Our own share of a layer (admitted with its prompt): tokenized off the loop, or remembered from
        admission for layer 1; a failure ends that slot with an error, like a failed inference."""
        generation = GenerationRequest(
            messages=tuple(ChatMessage(m.role, m.content) for m in task.messages),
            max_new_tokens=task.max_new_tokens, temperature=task.temperature, seed=self.config.engine.seed,
        )

        def submit(ids: tuple[int, ...]) -> None:
            if task.request_id not in self.runs:
                return  # the request ended meanwhile
            self._submit(QueuedTask(task_id=task.task_id, request_id=task.request_id, layer=task.layer,
                                    origin=self.device, generation=replace(generation, prompt_ids=ids),
                                    charge_bytes=self.admission.charge(generation, len(ids)),
                                    enqueued_at=time.monotonic()))

        def failed(exc: Exception) -> None:
            run = self.runs.get(task.request_id)
            if run is not None:
                error = ErrorBody(code=getattr(exc, "code", "internal"), message=f"{exc}"[:300])
                self._execute(run, run.on_result(self.device, task.task_id, None, error, 0.0, self._alive(),
                                                 self.rng, time.monotonic()))

        self.tokenizer.ids(generation.messages, then=submit, failed=failed)

    def _enqueue_rank(self, action: RunRank) -> None:
        """The select step: one score job on our own worker, in FCFS order with the generations, charged and
        counted as one task; its outcome ends the run (the picked proposal, or one error)."""
        probe = GenerationRequest(messages=(ChatMessage("user", "\n".join(action.answers)),), max_new_tokens=1)
        task = QueuedTask(task_id=action.task_id, request_id=action.request_id, layer=action.layer,
                          origin=self.device, generation=probe,
                          charge_bytes=self.admission.charge(probe, ranking_charge_tokens(action)),
                          enqueued_at=time.monotonic())
        self.admission.add(task)
        hop = self._loop.call_soon_threadsafe
        try:
            self.worker.submit(ScoreJob(key=action.task_id, run=rank_job(action, self._pairwise_template),
                                        on_done=lambda outcome, task=task: hop(self._on_ranked, task, outcome)))
        except Exception:
            self.admission.release(task.task_id)
            raise

    def _on_ranked(self, task: QueuedTask, outcome: object) -> None:
        if self.admission.release(task.task_id) is None:
            return
        self.counts["served"] += 1
        self._observe("task_served", False)
        run = self.runs.get(task.request_id)
        if run is None:
            return
        ranking, error, seconds = None, None, 0.0
        if isinstance(outcome, TimedRanking):
            ranking, seconds = outcome.ranking, outcome.seconds
        else:
            log.warning("ranking for %s failed: %r", task.request_id, outcome)
            code = outcome.code if isinstance(outcome, InferenceError) else "inference_failed"
            error = ErrorBody(code=code, message=f"{type(outcome).__name__}: {outcome}"[:400])
        self._execute(run, run.on_ranked(task.task_id, ranking, error, seconds, time.monotonic()))

    def _submit(self, task: QueuedTask) -> None:
        """Charge the task and hand it to the inference worker; its outcome comes back to this loop."""
        self.admission.add(task)
        hop = self._loop.call_soon_threadsafe
        on_delta = None
        stream = self._streams.get(task.request_id) if task.origin == self.device else None
        if stream is not None and task.layer > self.runs[task.request_id].request.layers:  # the final aggregation
            on_delta = lambda text, rid=task.request_id, tid=task.task_id: hop(self._on_delta, rid, tid, text)
        try:
            self.worker.submit(Job(key=task.task_id, request=task.generation,
                                   on_done=lambda outcome, task=task: hop(self._on_done, task, outcome),
                                   on_delta=on_delta))
        except Exception:
            self.admission.release(task.task_id)
            raise

    def _service_time_per_task(self, seconds: float) -> float:
        busy, served = self.worker.busy_total_s, self.worker.served_total
        last_busy, last_served = getattr(self, "_alpha_mark", (0.0, 0))
        self._alpha_mark = (busy, served)
        if served > last_served and busy > last_busy:
            return (busy - last_busy) / (served - last_served)
        return seconds

    def _on_delta(self, request_id: str, task_id: str, text: str) -> None:
        stream = self._streams.get(request_id)
        run = self.runs.get(request_id)
        if stream is None or run is None or not text or not any(s.task_id == task_id for s in run.slots):
            return  # the request finished, or this task is no longer its aggregation's
        self._guarded(lambda: self.replies.chunk(stream.route, stream.index, text))
        stream.index += 1

    def _on_done(self, task: QueuedTask, outcome: Generation | Exception) -> None:
        """One task's outcome; guarded alone, so a failure here never leaks another task's charge."""
        if self.admission.release(task.task_id) is None:
            return  # already settled
        self.counts["served"] += 1
        self._observe("task_served", task.origin != self.device)
        if isinstance(outcome, Generation):
            self._observe("observe_inference", outcome.seconds, outcome.new_tokens, getattr(outcome, "batch_size", 1),
                          outcome.prompt_tokens, outcome.cached_tokens)
        try:
            self._complete(task, outcome)
        except Exception:
            log.exception("completing task %s of %s failed", task.task_id, task.request_id)

    def _complete(self, task: QueuedTask, outcome: Generation | Exception) -> None:
        text, error, seconds, new_tokens, prompt_tokens, cached_tokens = None, None, 0.0, 0, None, None
        if isinstance(outcome, Generation):
            text, seconds, new_tokens = outcome.text, outcome.seconds, outcome.new_tokens
            prompt_tokens = min(max(int(outcome.prompt_tokens), 0), 10**7)
            cached_tokens = min(max(int(outcome.cached_tokens), 0), prompt_tokens) or None
            # alpha per task = the engine's busy time per task finished since the last estimate: with a batch of b
            # rows, b tasks share one wall time (DESIGN sec. 4); one at a time it is each inference's own time
            per_task = self._service_time_per_task(seconds)
            self.alpha_s = per_task if self.alpha_s is None else 0.8 * self.alpha_s + 0.2 * per_task
        elif isinstance(outcome, InferenceError):
            error = ErrorBody(code=outcome.code, message=str(outcome))
        else:
            log.error("inference failed: %r", outcome)
            error = ErrorBody(code="inference_failed", message=f"{type(outcome).__name__}: {outcome}"[:500])
        if task.origin == self.device:
            run = self.runs.get(task.request_id)
            if run is not None:
                self._execute(run, run.on_result(self.device, task.task_id, text, error, seconds, self._alive(),
                                                 self.rng, time.monotonic(), new_tokens=new_tokens,
                                                 prompt_tokens=prompt_tokens, cached_tokens=cached_tokens))
            return
        result_msg = ResultMessage(sender=self.device, request_id=task.request_id, layer=task.layer,
                                   task_id=task.task_id, text=text, error=error,
                                   inference_s=round(min(seconds, 86400.0), 4), new_tokens=new_tokens,
                                   prompt_tokens=prompt_tokens, cached_tokens=cached_tokens)
        self._send_internal(task.origin, result_msg)
