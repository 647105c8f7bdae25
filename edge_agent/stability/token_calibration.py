"""Fit the iteration model to the live agents: how much CPU they really get, and how much a full batch costs there.

The profile is one process alone on the machine. Live agents share its cores with each other (and with what
the machine calls cores: vCPUs may share a physical core), sample with a temperature, talk MQTT between steps.
Two loaded scenarios measured on the agents themselves fix the two numbers the iteration model cannot know from
the profile: one task at every agent at once gives the effective cores, and `max_batch` tasks at every agent at
once the stretch of the batch's extra step cost. Each is found by bisection so that the model, fed the very tasks
of the scenario (their prompt and new tokens, on their agents, all at time 0), takes on average what they took;
the model then also sees the tail of a round, when the agents that finished leave the others more CPU.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

import numpy as np

from ..engine.batch_profile import TokenCosts
from .iteration_server import IterationServer

Task = tuple  # prompt tokens, new tokens, seconds as measured[, prompt tokens from the prefix cache]
Round = list[list[Task]]  # per agent, the tasks it was sent at once


def modelled_seconds(costs: TokenCosts, rounds: list[Round], rows: int, cores: float | None, threads: int) -> float:
    """Mean seconds per task in the iteration model when every round's tasks arrive at their agents at once."""
    ends: list[float] = []
    for agents in rounds:
        heap: list = []
        count = sum(len(tasks) for tasks in agents)
        t_start, t_end = [0.0] * count, [0.0] * count
        server = IterationServer(len(agents), costs, rows, heap, t_start, t_end, cores=cores, threads=threads)
        task = 0
        for a, tasks in enumerate(agents):
            for prompt, new, _, *cached in tasks:
                server.admit(a, task, prompt, new, 0.0, cached[0] if cached else 0)
                task += 1
        while heap:
            t, _, version, a = heapq.heappop(heap)
            server.fire(a, t, version)
        ends += t_end
    return float(np.mean(ends))


def measured_seconds(rounds: list[Round]) -> float:
    return float(np.mean([t[2] for agents in rounds for tasks in agents for t in tasks]))


def _bisect(slower: Callable[[float], float], low: float, high: float, *, rising: bool) -> float:
    """The x in [low, high] where slower(x) (model minus measured seconds, monotone) crosses 0, else the end."""
    lo_gap, hi_gap = slower(low), slower(high)
    if (lo_gap >= 0) == (hi_gap >= 0):
        return low if abs(lo_gap) < abs(hi_gap) else high
    for _ in range(30):
        mid = (low + high) / 2
        if (slower(mid) < 0) == rising:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def effective_cores(costs: TokenCosts, rounds: list[Round], threads: int) -> float:
    """The cores that make one task per agent at once take what it did (fewer cores: slower, so falling)."""
    measured = measured_seconds(rounds)
    agents = len(rounds[0])
    return _bisect(lambda c: modelled_seconds(costs, rounds, 1, c, threads) - measured, 0.05, agents * threads,
                   rising=False)


def step_stretch(costs: TokenCosts, rounds: list[Round], rows: int, cores: float, threads: int) -> float:
    """The stretch of slowdown(b) - 1 that makes `rows` tasks per agent at once take what they did."""
    measured = measured_seconds(rounds)
    return _bisect(lambda x: modelled_seconds(costs.stretched(x), rounds, rows, cores, threads) - measured, 0.25, 8.0,
                   rising=True)
