"""The simulator's agents as the engine serves them, iteration by iteration, with prefill as work of its own.

engine/batch.py runs iterations: one decode step of every decoding row, then one prefill chunk of the first
newcomer, so a newcomer's prompt stalls every row for a chunk per iteration and never batches. Here each agent
keeps one clock, the iterations it has run (a fluid count): a newcomer's prefill ends `len(prefill_chunks(P))`
iterations after it became the first newcomer, a decoding row ends `D - 1` iterations after its prefill (the
first token comes with the prompt's logits), and an iteration lasts

    tau = step(the rows' contexts) + prefill(P) / pieces of the newcomer being prefilled (0 when none),

stretched by 1 / the agent's share of the CPU when agents share `cores` (4 agents of 1 thread on 2 cores each
get half a core while all are busy, a whole one while two idle). tau changes only at events (a row joins or
leaves, a prefill ends, an agent starts or stops work), so every clock runs at a constant rate between them; the
rows' contexts are taken at the last event. Tasks past `max_rows` wait FCFS for a free row.
"""

from __future__ import annotations

import heapq
from collections import deque

import numpy as np

from ..engine.batch import prefill_chunks
from ..engine.batch_profile import TokenCosts

EPS = 1e-9


class IterationServer:
    """Every agent's batch; events go on the simulator's heap as (time, -1, version, agent)."""

    def __init__(self, agents: int, costs: TokenCosts, max_rows: int, heap: list, t_start: list, t_end: list,
                 *, cores: float | None = None, threads: int = 1, window: tuple[float, float] = (0.0, float("inf"))):
        self.costs, self.max_rows, self.heap = costs, max_rows, heap
        self.t_start, self.t_end = t_start, t_end
        self.cores, self.threads = cores, threads
        self.window = window
        n = agents
        self.clock = [0.0] * n  # iterations run
        self.stamp = [0.0] * n  # when the clock was last brought up to date
        self.tau = [0.0] * n  # seconds per iteration with the whole CPU the agent asks for
        self.rows: list[list] = [[] for _ in range(n)]  # heaps of (iteration at which the row ends, task)
        self.joining: list[deque] = [deque() for _ in range(n)]  # admitted, waiting for (or in) prefill
        self.head_end = [0.0] * n  # iteration at which the first newcomer's prefill ends
        self.head_cost = [0.0] * n  # seconds of each of its chunks
        self.waiting: list[deque] = [deque() for _ in range(n)]  # past max_rows
        self.version = [0] * n
        self.busy_since = [0.0] * n
        self.busy_s = [0.0] * n
        self.busy = 0  # agents with work
        self.share = 1.0
        self.prompt: dict[int, int] = {}  # task -> prompt tokens
        self.new: dict[int, int] = {}  # task -> new tokens
        self.cached: dict[int, int] = {}  # task -> prompt tokens its prefill takes from the prefix cache
        self.joined: dict[int, float] = {}  # decoding task -> iteration its prefill ended

    # -- the simulator's two calls --

    def admit(self, a: int, task: int, prompt_tokens: int, new_tokens: int, t: float, cached_tokens: int = 0) -> None:
        """`cached_tokens` of the prompt come from the prefix cache: not prefilled, but in the row's context."""
        self.prompt[task], self.new[task] = max(1, prompt_tokens), max(1, new_tokens)
        if cached_tokens > 0:
            self.cached[task] = min(cached_tokens, self.prompt[task] - 1)
        was_idle = self._idle(a)
        if was_idle:
            self.busy_since[a] = t
            self._set_busy(self.busy + 1, t)
        self._advance(a, t)
        if len(self.rows[a]) + len(self.joining[a]) < self.max_rows:
            self._join(a, task, t)
        else:
            self.waiting[a].append(task)
        self._retime(a, t)

    def fire(self, a: int, t: float, version: int) -> int:
        """The agent's event at t: the task that finished then, or -1 (a prefill ended, or a stale event)."""
        if version != self.version[a]:
            return -1
        self._advance(a, t)
        rows, now = self.rows[a], self.clock[a]
        # due to within float error, in iterations and in time (a later event must move the clock)
        tol = max(EPS * (1.0 + now), EPS * (1.0 + t) * self.share / self.tau[a]) if self.tau[a] else EPS
        done = -1
        if rows and rows[0][0] - now <= tol:
            _, done = heapq.heappop(rows)
            self.joined.pop(done, None)
            self._finish(a, done, t)
        elif self.joining[a] and self.head_end[a] - now <= tol:
            task = self.joining[a].popleft()
            if self.new[task] <= 1:
                done = task
                self._finish(a, task, t)
            else:
                self.joined[task] = now
                heapq.heappush(rows, (now + self.new[task] - 1, task))
            self._start_head(a)
        if self._idle(a):
            lo, hi = max(self.busy_since[a], self.window[0]), min(t, self.window[1])
            if hi > lo:
                self.busy_s[a] += hi - lo
            self.tau[a] = 0.0
            self.version[a] += 1
            self._set_busy(self.busy - 1, t)
        else:
            self._retime(a, t)
        return done

    # -- inside --

    def _idle(self, a: int) -> bool:
        return not self.rows[a] and not self.joining[a]

    def _join(self, a: int, task: int, t: float) -> None:
        self.t_start[task] = t
        self.joining[a].append(task)
        if len(self.joining[a]) == 1:
            self._start_head(a)

    def _start_head(self, a: int) -> None:
        if not self.joining[a]:
            return
        task = self.joining[a][0]
        prompt, cached = self.prompt[task], self.cached.get(task, 0)
        pieces = max(1, sum(start >= cached for start, _ in prefill_chunks(prompt, self.costs.prefill_chunk)))
        self.head_end[a] = self.clock[a] + pieces
        self.head_cost[a] = self.costs.prefill(prompt - cached) / pieces

    def _finish(self, a: int, task: int, t: float) -> None:
        self.t_end[task] = t
        self.prompt.pop(task, None)
        self.new.pop(task, None)
        self.cached.pop(task, None)
        if self.waiting[a]:
            self._join(a, self.waiting[a].popleft(), t)

    def _advance(self, a: int, t: float) -> None:
        if self.tau[a] > 0.0:
            self.clock[a] += (t - self.stamp[a]) * self.share / self.tau[a]
        self.stamp[a] = t

    def _retime(self, a: int, t: float) -> None:
        """Price the agent's iteration as it is now and schedule its next event."""
        rows, now = self.rows[a], self.clock[a]
        contexts = [self.prompt[task] + (now - self.joined[task]) for _, task in rows]
        tau = self.costs.step(contexts) + (self.head_cost[a] if self.joining[a] else 0.0)
        nxt = min(rows[0][0] if rows else float("inf"), self.head_end[a] if self.joining[a] else float("inf"))
        self.tau[a] = tau
        self.version[a] += 1
        heapq.heappush(self.heap, (t + max(0.0, nxt - now) * tau / self.share, -1, self.version[a], a))

    def _set_busy(self, busy: int, t: float) -> None:
        """A change in how many agents work changes every working agent's share of the CPU."""
        self.busy = busy
        if self.cores is None:
            return
        share = min(1.0, self.cores / (self.threads * busy)) if busy else 1.0
        if share == self.share:
            return
        working = [a for a in range(len(self.rows)) if not self._idle(a)]
        for a in working:
            self._advance(a, t)
        self.share = share
        for a in working:
            self._retime(a, t)


def saturated_task_s(costs: TokenCosts, tasks: tuple[tuple[int, ...], ...], rows: int) -> float:
    """Seconds of CPU per task (one agent's whole CPU) when the agent runs full batches of `rows`: its prefill
    (of the tokens the prefix cache did not hold), which does not batch, plus its share of the steps it decodes
    in (rows at the tasks' mean context). A bound: no schedule of these tasks serves them faster, so a rate
    needing more is unstable."""
    prompt = float(np.mean([t[0] for t in tasks]))
    prefilled = float(np.mean([t[0] - (t[2] if len(t) > 2 else 0) for t in tasks]))
    new = float(np.mean([max(1, t[1]) for t in tasks]))
    context = prompt + new / 2
    return costs.prefill(round(prefilled)) + (new - 1) * costs.step([context] * rows) / rows


def token_capacity(costs: TokenCosts, first: tuple[tuple[int, ...], ...], later: tuple[tuple[int, ...], ...],
                   *, agents: int, layers: int, proposers: int, max_batch: int, cores: float | None,
                   threads: int) -> dict:
    """The largest rate per user the iteration model allows (uniform peers, every agent alike): each prompt
    brings ((k+1)M + 1) tasks to the mesh's agents, (k+1) of them first-step tasks when M > 0, the rest carrying
    the previous answers; saturated agents sharing `cores` get cores / (threads * agents) of a core each."""
    later = later or first
    m, k = layers, proposers if layers else 0
    per_prompt = (k + 1) * m + 1
    n_first = (k + 1) if m else 1
    work = {b: n_first * saturated_task_s(costs, first, b) + (per_prompt - n_first) * saturated_task_s(costs, later, b)
            for b in (1, max_batch)}
    share = min(1.0, cores / (threads * agents)) if cores else 1.0
    return {"max_rate": share / work[max_batch], "max_rate_one_row": share / work[1],
            "speedup": work[1] / work[max_batch], "cpu_s_per_prompt": work[max_batch], "share": share}
