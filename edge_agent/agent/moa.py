"""The MoA state of one prompt as pure code: which agents get which prompt in which layer, and what comes next.

The agent loop feeds events in (`start`, `on_ack`, `on_result`, `on_ranked`, `on_tick`) and carries out the
actions that come back (`SendTask`, `RunLocal`, `RunRank`, `LayerDone`, `Finish`). No I/O and no clock: time
comes in as `now`, peer choice draws from the `rng` passed in; only task ids are fresh random ids.
The last step is the request's `aggregation`: `synthesize` (one more generation over the last layer's answers,
the paper) or `select` (a ranking of them on this agent's worker, `RunRank`; the best one is the answer, verbatim).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..ranking.select import Ranking
from ..wire.messages import (
    ErrorBody,
    LayerTrace,
    TaskMessage,
    TraceEntry,
    UserRequest,
    WireChatMessage,
    new_id,
)
from .peers import choose_peers

# ---------------------------------------------------------------- prompts


def proposal_messages(prompt: str, system_prompt: str, previous: Sequence[str], max_chars: int = 0
                      ) -> list[WireChatMessage]:
    """Layer 1: the user's prompt alone. Later layers and the final aggregation: the prompt under the
    synthesis system prompt with the previous layer's answers appended (as in the paper's `dmoa.py`), each cut
    to `max_chars` (0 = whole)."""
    if not previous:
        return [WireChatMessage(role="user", content=prompt)]
    references = [cap_reference(answer, max_chars) for answer in previous]
    return [
        WireChatMessage(role="system", content=synthesis_text(system_prompt, references)),
        WireChatMessage(role="user", content=prompt),
    ]


def synthesis_text(system_prompt: str, answers: Sequence[str]) -> str:
    return system_prompt + "".join(f"\n\nResponse-{i}: {answer}" for i, answer in enumerate(answers, 1))


ELLIPSIS = " […]"  # what a cut reference ends with, so the model (and a reader of the prompt) knows


def cap_reference(text: str, max_chars: int) -> str:
    """`text` if it fits in `max_chars` (or the cap is 0), else its start, cut at the last word boundary, with
    the ellipsis: at most `max_chars` in all (mid-word only for a word longer than half the cap)."""
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    room = max(0, max_chars - len(ELLIPSIS))
    head = text[:room]
    if not text[room:room + 1].isspace():  # the cut falls inside a word: back to the boundary before it
        boundary = max(head.rfind(" "), head.rfind("\n"), head.rfind("\t"))
        if boundary >= room // 2:
            head = head[:boundary]
    return head.rstrip() + ELLIPSIS


def inferences_per_prompt(layers: int, proposers: int) -> int:
    """The paper's cost of one prompt: (k+1) answers in each of M layers, plus the final aggregation."""
    return (proposers + 1) * layers + 1


# ---------------------------------------------------------------- actions


@dataclass(frozen=True)
class SendTask:
    device: str
    task: TaskMessage


@dataclass(frozen=True)
class RunLocal:
    task: TaskMessage  # run on this agent's own queue, admitted unconditionally (the prompt already was)


@dataclass(frozen=True)
class RunRank:
    """Rank the last layer's answers on this agent's own worker (a score job, no generation)."""

    task_id: str
    request_id: str
    layer: int
    instruction: str
    answers: tuple[str, ...]
    ranker: str
    max_chars: int  # each answer as the ranker sees it (the answer returned is whole)


@dataclass(frozen=True)
class LayerDone:
    """A checkpoint for the journal: the next layer starts from these answers."""

    next_layer: int
    answers: tuple[str, ...]
    trace: tuple[LayerTrace, ...]


@dataclass(frozen=True)
class Finish:
    response: str | None
    inferences: int
    trace: tuple[LayerTrace, ...]
    error: ErrorBody | None = None


Action = SendTask | RunLocal | RunRank | LayerDone | Finish


# ---------------------------------------------------------------- state


@dataclass
class Slot:
    """One proposer position of a layer; it may move from peer to peer when one fails."""

    device: str
    task_id: str
    state: str = "waiting_ack"  # waiting_ack | running | done | failed
    deadline: float | None = None
    answer: str | None = None
    inference_s: float | None = None
    new_tokens: int | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    moves: int = 0
    kind: str = "generate"  # generate | rank (a select step: never moves to a peer)


@dataclass
class MoaTimeouts:
    ack_s: float = 3.0
    grace_s: float = 15.0
    request_s: float = 900.0
    eta_factor: float = 1.5
    max_redispatch: int = 2


@dataclass
class MoaRun:
    request: UserRequest
    self_id: str
    system_prompt: str
    timeouts: MoaTimeouts = field(default_factory=MoaTimeouts)
    layer: int = 1
    previous: list[str] = field(default_factory=list)
    trace: list[LayerTrace] = field(default_factory=list)
    slots: list[Slot] = field(default_factory=list)
    dropped: list[TraceEntry] = field(default_factory=list)
    finished: bool = False
    request_deadline: float | None = None
    peer_cost: Callable[[str], float] | None = None  # None: uniform choice (the paper); else lowest cost of d
    peer_candidates: int = 0
    local_eta: Callable[[], float] | None = None  # when our own queue would finish a task sent now (seconds)
    # whether our own engine is still making progress (no call past the hang timeout): a slow board, e.g. one
    # whose task outgrew the estimate, keeps its own slot; only a hung one loses it
    local_healthy: Callable[[], bool] | None = None
    _task_slots: dict[str, Slot] = field(default_factory=dict)

    @property
    def aggregating(self) -> bool:
        return self.layer > self.request.layers

    @property
    def selecting(self) -> bool:
        """The last step ranks the answers instead of writing one (M = 0 has nothing to rank: it generates)."""
        return self.aggregating and self.request.aggregation == "select" and self.request.layers > 0

    # -- events --
    def start(self, alive: Sequence[str], rng: random.Random, now: float) -> list[Action]:
        """Begin (or, after a restart, resume) at `self.layer` with `self.previous` answers."""
        if self.request_deadline is None:
            self.request_deadline = now + self.timeouts.request_s
        self.slots, self.dropped, self._task_slots = [], [], {}
        if self.selecting:
            return self._start_select(now)
        peers = [] if self.aggregating else self._choose(alive, self.request.proposers, rng, {self.self_id})
        actions: list[Action] = []
        for device in [self.self_id, *peers]:
            actions.append(self._dispatch(Slot(device=device, task_id=new_id()), now))
        return actions

    def on_ack(self, sender: str, task_id: str, accepted: bool, reason: str | None, eta_s: float,
               alive: Sequence[str], rng: random.Random, now: float) -> list[Action]:
        slot = self._current_slot(sender, task_id)
        if slot is None or slot.state != "waiting_ack" or self.finished:
            return []
        if accepted:
            slot.state = "running"
            slot.deadline = now + max(eta_s, 0.0) * self.timeouts.eta_factor + self.timeouts.grace_s
            return []
        self.dropped.append(TraceEntry(device=slot.device, outcome="busy", detail=reason))
        return self._move_or_fail(slot, alive, rng, now)

    def on_result(self, sender: str, task_id: str, text: str | None, error: ErrorBody | None, inference_s: float,
                  alive: Sequence[str], rng: random.Random, now: float, *, new_tokens: int | None = None,
                  prompt_tokens: int | None = None, cached_tokens: int | None = None) -> list[Action]:
        slot = self._current_slot(sender, task_id)
        if slot is None or slot.state in ("done", "failed") or self.finished:
            return []  # late, duplicate, or from someone else: the slot has moved on
        if error is not None:
            if slot.device == self.self_id:
                return self._finish_error(error)
            self.dropped.append(TraceEntry(device=slot.device, outcome="error", detail=error.code))
            return self._move_or_fail(slot, alive, rng, now)
        slot.state, slot.answer, slot.inference_s, slot.new_tokens = "done", text or "", inference_s, new_tokens
        slot.prompt_tokens, slot.cached_tokens = prompt_tokens, cached_tokens
        return self._advance_if_complete(alive, rng, now)

    def on_ranked(self, task_id: str, ranking: Ranking | None, error: ErrorBody | None, seconds: float,
                  now: float) -> list[Action]:
        """The select step's outcome: the picked answer verbatim, or the ranker's error as the one reply."""
        slot = self._task_slots.get(task_id)
        if slot is None or slot.kind != "rank" or slot.state != "running" or self.finished:
            return []
        if error is None and (ranking is None or not 0 <= ranking.picked < len(self.previous)
                              or not all(math.isfinite(x) for x in ranking.scores)):
            error = ErrorBody(code="inference_failed", message="the ranker gave no valid pick or a non-finite score")
        if error is not None:
            return self._finish_error(ErrorBody(code=error.code, message=f"ranking the proposals failed: "
                                                                         f"{error.message}"[:500]))
        slot.state = "done"
        entry = TraceEntry(device=self.self_id, outcome="ok", inference_s=round(min(max(seconds, 0.0), 86400.0), 4),
                           new_tokens=0, prompt_tokens=min(ranking.prompt_tokens, 10**7))
        scores = [round(min(max(float(x), -1e6), 1e6), 6) for x in ranking.scores]
        return self._finish_select(ranking.picked, [entry], scores)

    def on_tick(self, alive: Sequence[str], rng: random.Random, now: float) -> list[Action]:
        if self.finished:
            return []
        if self.request_deadline is not None and now >= self.request_deadline:
            return self._finish_error(ErrorBody(
                code="timeout", message=f"no answer within {self.timeouts.request_s:.0f}s (layer {self.layer})"))
        actions: list[Action] = []
        for slot in list(self.slots):
            if (slot.state in ("waiting_ack", "running") and slot.device != self.self_id
                    and slot.device not in alive):
                # not heard from for the peer timeout (a cut link, a frozen board: no will comes), or saying its
                # engine hangs: move on now instead of at its deadline, which a cold or slow peer makes long
                self.dropped.append(TraceEntry(device=slot.device, outcome="unreachable"))
                actions += self._move_or_fail(slot, alive, rng, now)
                continue
            if slot.state in ("waiting_ack", "running") and slot.deadline is not None and now >= slot.deadline:
                if slot.device == self.self_id and self.local_healthy is not None and self.local_healthy():
                    slot.deadline = now + self._local_deadline_s()
                    continue
                if slot.kind == "rank":  # our own worker did not rank in time: nobody else can
                    return self._finish_error(ErrorBody(code="timeout", message="ranking the proposals took "
                                                                                 "longer than its deadline"))
                outcome = "ack_timeout" if slot.state == "waiting_ack" else "result_timeout"
                self.dropped.append(TraceEntry(device=slot.device, outcome=outcome))
                actions += self._move_or_fail(slot, alive, rng, now)
        return actions

    def on_peer_gone(self, device: str, alive: Sequence[str], rng: random.Random, now: float) -> list[Action]:
        """A peer's will arrived: its slots move on now instead of waiting for their deadline."""
        actions: list[Action] = []
        for slot in list(self.slots):
            if slot.device == device and slot.state in ("waiting_ack", "running"):
                self.dropped.append(TraceEntry(device=device, outcome="unreachable"))
                actions += self._move_or_fail(slot, alive, rng, now)
        return actions

    # -- internals --
    def _current_slot(self, sender: str, task_id: str) -> Slot | None:
        """The slot whose current task this is, if `sender` is the agent that task was sent to."""
        slot = self._task_slots.get(task_id)
        if slot is None or slot.task_id != task_id or slot.device != sender:
            return None
        return slot

    def _choose(self, alive: Sequence[str], k: int, rng: random.Random, exclude: set[str]) -> list[str]:
        return choose_peers(alive, k, rng, exclude=exclude, cost=self.peer_cost, candidates=self.peer_candidates)

    def _task(self, task_id: str) -> TaskMessage:
        messages = proposal_messages(self.request.prompt, self.system_prompt, self.previous,
                                     self.request.reference_max_chars)
        return TaskMessage(
            sender=self.self_id, request_id=self.request.request_id, layer=self.layer, task_id=task_id,
            messages=messages, max_new_tokens=self.request.max_new_tokens, temperature=self.request.temperature,
        )

    def _dispatch(self, slot: Slot, now: float) -> Action:
        if slot not in self.slots:
            self.slots.append(slot)
        self._task_slots[slot.task_id] = slot
        task = self._task(slot.task_id)
        if slot.device == self.self_id:
            # our own queue: no ack; a deadline as for a peer, so a hung engine cannot hold the request forever
            slot.state = "running"
            slot.deadline = None if self.local_eta is None else now + self._local_deadline_s()
            return RunLocal(task=task)
        slot.state, slot.deadline = "waiting_ack", now + self.timeouts.ack_s
        return SendTask(device=slot.device, task=task)

    def _local_deadline_s(self) -> float:
        assert self.local_eta is not None
        return self.local_eta() * self.timeouts.eta_factor + self.timeouts.grace_s

    def _start_select(self, now: float) -> list[Action]:
        if len(self.previous) <= 1:  # one proposal: it is the answer, nothing to rank
            return self._finish_select(0, [], None)
        slot = Slot(device=self.self_id, task_id=new_id(), state="running", kind="rank")
        slot.deadline = None if self.local_eta is None else now + self._local_deadline_s()
        self.slots.append(slot)
        self._task_slots[slot.task_id] = slot
        return [RunRank(task_id=slot.task_id, request_id=self.request.request_id, layer=self.layer,
                        instruction=self.request.prompt, answers=tuple(self.previous),
                        ranker=self.request.select_ranker, max_chars=self.request.reference_max_chars)]

    def _finish_select(self, picked: int, answered: list[TraceEntry], scores: list[float] | None) -> list[Action]:
        self.trace.append(LayerTrace(
            layer=self.layer, kind="select", answered=answered, requested=1, picked=picked, scores=scores,
            ranker=self.request.select_ranker if scores is not None else None,
        ))
        self.finished = True
        return [Finish(response=self.previous[picked], inferences=sum(len(t.answered) for t in self.trace),
                       trace=tuple(self.trace))]

    def _move_or_fail(self, slot: Slot, alive: Sequence[str], rng: random.Random, now: float) -> list[Action]:
        used = {self.self_id, slot.device} | {s.device for s in self.slots} | {d.device for d in self.dropped}
        replacement = self._choose(alive, 1, rng, used) if slot.moves < self.timeouts.max_redispatch else []
        if replacement:
            slot.device, slot.task_id, slot.moves = replacement[0], new_id(), slot.moves + 1
            return [self._dispatch(slot, now)]
        slot.state, slot.deadline = "failed", None
        return self._advance_if_complete(alive, rng, now)

    def _advance_if_complete(self, alive: Sequence[str], rng: random.Random, now: float) -> list[Action]:
        if any(s.state not in ("done", "failed") for s in self.slots):
            return []
        answered = [s for s in self.slots if s.state == "done"]
        self.trace.append(LayerTrace(
            layer=self.layer, kind="aggregate" if self.aggregating else "propose",
            answered=[TraceEntry(device=s.device, outcome="ok", inference_s=s.inference_s, new_tokens=s.new_tokens,
                                 prompt_tokens=s.prompt_tokens, cached_tokens=s.cached_tokens) for s in answered],
            dropped=list(self.dropped),
            requested=1 if self.aggregating else self.request.proposers + 1,
        ))
        inferences = sum(len(t.answered) for t in self.trace)
        if not answered:  # every slot failed: nothing to go on with
            last = self.dropped[-1].outcome if self.dropped else "error"
            code = "timeout" if last.endswith("timeout") else "no_peers" if last in ("busy", "unreachable") else \
                "inference_failed"
            return self._finish_error(ErrorBody(code=code, message=f"no agent answered layer {self.layer} "
                                                                   f"(last: {last})"))
        if self.aggregating:
            self.finished = True
            return [Finish(response=answered[0].answer or "", inferences=inferences, trace=tuple(self.trace))]
        self.previous = [s.answer or "" for s in answered]
        self.layer += 1
        checkpoint = LayerDone(next_layer=self.layer, answers=tuple(self.previous), trace=tuple(self.trace))
        return [checkpoint, *self.start(alive, rng, now)]

    def _finish_error(self, error: ErrorBody) -> list[Action]:
        self.finished = True
        return [Finish(response=None, inferences=sum(len(t.answered) for t in self.trace),
                       trace=tuple(self.trace), error=error)]
