"""Fit the iteration model to the live agents: how much CPU they really get, and how much a full batch costs there.

The profile is one process alone on the machine. Live agents share its cores with each other (and with what
the machine calls cores: vCPUs may share a physical core), sample with a temperature, stream and talk MQTT
between steps. Two loaded scenarios measured on the agents themselves fix the two numbers the iteration model
cannot know from the profile: one task at every agent at once gives the effective cores (the model's solo time
of those very tasks over the time they took, times agents x threads), and `max_batch` tasks at every agent at
once give the stretch of the batch's extra step cost, found by bisection so that the model, fed the same tasks
all at once, takes as long as they did.
"""

from __future__ import annotations

import logging

import numpy as np

from ..engine.batch_profile import TokenCosts
from .simulator import SimConfig, simulate

log = logging.getLogger(__name__)

Task = tuple[int, int, float]  # prompt tokens, new tokens, seconds as measured


def solo_seconds(costs: TokenCosts, prompt_tokens: int, new_tokens: int) -> float:
    """A task alone with a whole core, as the model prices it."""
    return costs.prefill(prompt_tokens) + (max(1, new_tokens) - 1) * costs.step([prompt_tokens + new_tokens / 2])


def effective_cores(costs: TokenCosts, tasks: list[Task], agents: int, threads: int) -> float:
    """From tasks run one per agent, every agent at once: each got solo / measured of a core."""
    share = float(np.mean([solo_seconds(costs, p, d) for p, d, _ in tasks]) / np.mean([s for _, _, s in tasks]))
    return min(share, 1.0) * agents * threads


def modelled_batch_seconds(costs: TokenCosts, tasks: list[Task], agents: int, rows: int, cores: float,
                           threads: int) -> float:
    """Mean seconds per task when every agent starts `rows` of these tasks at once, in the iteration model."""
    pairs = [(p, d) for p, d, _ in tasks]
    users = np.repeat(np.arange(agents), rows)
    cfg = SimConfig(agents=agents, layers=0, proposers=0, rate=1.0, alphas=(1.0,), prompts=len(users), costs=costs,
                    tokens_first=tuple(pairs), max_batch=rows, cores=cores, threads=threads, warmup=0.0)
    run = simulate(cfg, arrivals=np.zeros(len(users)), users=users, window=(0.0, 1.0))
    return float(np.mean(run.task_end - run.task_arrival))


def step_stretch(costs: TokenCosts, tasks: list[Task], agents: int, rows: int, cores: float, threads: int,
                 *, low: float = 0.25, high: float = 8.0) -> float:
    """The stretch of slowdown(b) - 1 that makes the model's batch of `rows` take what the agents' did."""
    measured = float(np.mean([s for _, _, s in tasks]))

    def gap(x: float) -> float:
        return modelled_batch_seconds(costs.stretched(x), tasks, agents, rows, cores, threads) - measured

    if gap(low) >= 0:
        return low
    if gap(high) <= 0:
        return high
    for _ in range(30):
        mid = (low + high) / 2
        low, high = (mid, high) if gap(mid) < 0 else (low, mid)
    return (low + high) / 2
