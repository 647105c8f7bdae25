"""Print the simulator tables of docs/stability.md: `python tools/experiments/stability_tables.py`.

1. M = 0 against M/D/1 and M/M/1 (Pollaczek-Khinchine), 2. the paper's (M, k) grid, 3. peer policies with
mixed models. Deterministic given the seeds; takes about a minute on two cores.
"""

from __future__ import annotations

import sys

from edge_agent.stability.closed_form import mg1_waiting
from edge_agent.stability.planner import plan
from edge_agent.stability.simulator import SimConfig, simulate

GRID = [(0, 0), (1, 1), (1, 2), (2, 1), (2, 2), (1, 3), (2, 3)]


def closed_form_table(prompts: int = 400_000, seeds: int = 8) -> str:
    lines = [f"| service | rho | Lq closed form | Lq simulated (mean of {seeds} seeds) | error |",
             "| --- | --- | --- | --- | --- |"]
    for service, scv in (("deterministic", 0.0), ("exponential", 1.0)):
        for rho in (0.3, 0.6, 0.8, 0.9):
            sims = [simulate(SimConfig(agents=4, layers=0, proposers=0, rate=rho, alphas=(1.0,), prompts=prompts,
                                       seed=s, service=service)).summary()["mean_waiting"] for s in range(seeds)]
            sim = sum(sims) / len(sims)
            exact = mg1_waiting(rho, scv)
            lines.append(f"| {service} | {rho} | {exact:.4f} | {sim:.4f} | {100 * (sim / exact - 1):+.1f}% |")
    return "\n".join(lines)


def grid_table(rate: float = 0.25, alpha: float = 0.4, prompts: int = 100_000) -> str:
    lines = ["| MoA configuration | (k+1)M+1 | rho | latency mean s | p95 s | avg waiting | avg in system |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for m, k in GRID:
        p = plan(agents=4, layers=m, proposers=k, rate=rate, alphas=(alpha,))
        s = simulate(SimConfig(agents=4, layers=m, proposers=k, rate=rate, alphas=(alpha,), prompts=prompts,
                               seed=1, service="exponential")).summary()
        lines.append(f"| M = {m}, k = {k} | {p.inferences_per_prompt} | {p.utilization:.2f} "
                     f"| {s['latency']['mean']:.2f} | {s['latency']['p95']:.2f} | {s['mean_waiting']:.2f} "
                     f"| {s['mean_in_system']:.2f} |")
    return "\n".join(lines)


def policy_table(prompts: int = 100_000) -> str:
    alphas = (1.0, 1.0, 1.0, 2.0)
    lines = [("| (M, k) | lambda | paper bound | speed-aware bound | policy | busiest util | avg in system "
              "| latency mean s | trend /s |"), "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m, k, rate in ((1, 1, 0.15), (1, 1, 0.22), (1, 2, 0.11), (1, 2, 0.18), (1, 2, 0.21)):
        p = plan(agents=4, layers=m, proposers=k, rate=rate, alphas=alphas, speed_aware=True)
        for policy in ("uniform", "least-loaded", "speed-aware"):
            s = simulate(SimConfig(agents=4, layers=m, proposers=k, rate=rate, alphas=alphas, prompts=prompts,
                                   seed=1, service="exponential", policy=policy, candidates=3)).summary()
            lines.append(f"| ({m}, {k}) | {rate} | {p.max_rate:.4g} | {p.speed_aware.max_rate:.4g} | {policy} "
                         f"| {s['utilization']:.2f} | {s['mean_in_system']:.2f} | {s['latency']['mean']:.2f} "
                         f"| {s['queue_growth_per_s']:+.4f} |")
    return "\n".join(lines)


def main() -> int:
    which = sys.argv[1:] or ["closed", "grid", "policy"]
    if "closed" in which:
        print(closed_form_table(), end="\n\n")
    if "grid" in which:
        print(grid_table(), end="\n\n")
    if "policy" in which:
        print(policy_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
