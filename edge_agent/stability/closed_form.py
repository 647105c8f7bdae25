"""Closed forms for M = 0, where every agent is an M/G/1 queue fed by its own user (Pollaczek-Khinchine)."""

from __future__ import annotations


def mg1_waiting(rho: float, scv: float) -> float:
    """Time-average number waiting (not in service) in M/G/1: rho^2 (1 + c_s^2) / (2 (1 - rho)); scv 0 is M/D/1,
    1 is M/M/1."""
    if not 0 <= rho < 1:
        raise ValueError(f"rho = {rho} is not in [0, 1): the queue is unstable")
    return rho * rho * (1.0 + scv) / (2.0 * (1.0 - rho))


def in_system(waiting: float, rho: float) -> float:
    """Number in system = number waiting + number in service (rho)."""
    return waiting + rho


def latency(waiting: float, rate: float, alpha: float) -> float:
    """Mean sojourn by Little's law: W = Lq / lambda + alpha."""
    return waiting / rate + alpha


def batched_in_system(rate: float, alpha: float, max_batch: int, slowdown) -> float:
    """Mean number in system of one agent serving continuous batches, exponential work of mean alpha (M = 0).

    With n tasks present, min(n, B) decode together, each at 1 / slowdown(b) of its solo speed, so tasks leave at
    mu_n = min(n, B) / (alpha * slowdown(min(n, B))): a birth-death chain, pi_n proportional to prod lambda / mu_i.
    Past B the ratio is constant (r = lambda / mu_B < 1 for stability) and the tail sums in closed form.
    B = 1 is M/M/1; slowdown(b) = b (no gain from batching) is M/M/1 too; slowdown = 1 is M/M/B.
    """
    mu = [b / (alpha * slowdown(b)) for b in range(1, max_batch + 1)]
    r = rate / mu[-1]
    if not r < 1:
        raise ValueError(f"lambda = {rate} >= mu_B = {mu[-1]}: the queue is unstable")
    weights = [1.0]
    for b in range(max_batch):
        weights.append(weights[-1] * rate / mu[b])
    head = sum(weights[:-1])  # n = 0 .. B-1
    mass_head = sum(n * w for n, w in enumerate(weights[:-1]))
    w_b = weights[-1]  # n = B, then w_B r^j for n = B + j
    tail = w_b / (1 - r)
    mass_tail = w_b * (max_batch / (1 - r) + r / (1 - r) ** 2)
    return (mass_head + mass_tail) / (head + tail)
