"""Closed forms for M = 0, where every agent is an M/G/1 queue fed by its own user (Pollaczek-Khinchine)."""

from __future__ import annotations


def mg1_waiting(rho: float, scv: float) -> float:
    """Time-average number waiting (not in service) in M/G/1: rho^2 (1 + c_s^2) / (2 (1 - rho))."""
    if not 0 <= rho < 1:
        raise ValueError(f"rho = {rho} is not in [0, 1): the queue is unstable")
    return rho * rho * (1.0 + scv) / (2.0 * (1.0 - rho))


def md1_waiting(rho: float) -> float:
    """M/D/1: rho^2 / (2 (1 - rho))."""
    return mg1_waiting(rho, 0.0)


def mm1_waiting(rho: float) -> float:
    """M/M/1: rho^2 / (1 - rho)."""
    return mg1_waiting(rho, 1.0)


def in_system(waiting: float, rho: float) -> float:
    """Number in system = number waiting + number in service (rho)."""
    return waiting + rho


def latency(waiting: float, rate: float, alpha: float) -> float:
    """Mean sojourn by Little's law: W = Lq / lambda + alpha."""
    return waiting / rate + alpha


def squared_cv(service: str) -> float:
    """Squared coefficient of variation of the named service distribution."""
    return {"deterministic": 0.0, "exponential": 1.0}[service]
