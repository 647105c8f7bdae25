"""Queueing stability of the distributed MoA: planner (Theorem 1), simulator, closed forms, live experiment."""
