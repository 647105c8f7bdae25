"""Simulator scale: wall and CPU seconds to simulate and summarise a large mesh, FCFS and continuous batching.

    python tools/bench/simulator.py [--agents 10000] [--prompts 1000000] [--max-batch 1 4] [--profile]

M = 1, k = 2 at 0.7x the (batched) bound, deterministic service alpha = 1 s; batching with the profile
slowdown = (1, 1.25, 1.5, 1.8). CPU seconds are the figure to quote on a shared machine. `--profile` prints
cProfile's ten most expensive functions of each run.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from edge_agent.engine.batch_profile import BatchProfile
from edge_agent.stability.planner import plan
from edge_agent.stability.simulator import SimConfig, simulate

PROFILE = BatchProfile((1.0, 1.25, 1.5, 1.8), "bench")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--prompts", type=int, default=1_000_000)
    parser.add_argument("--max-batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    rows = []
    for b in args.max_batch:
        profile = PROFILE if b > 1 else None
        bounds = plan(agents=args.agents, layers=1, proposers=2, rate=0.01, alphas=(1.0,), max_batch=b,
                      profile=profile)
        bound = bounds.batch.max_rate if bounds.batch else bounds.max_rate
        cfg = SimConfig(agents=args.agents, layers=1, proposers=2, rate=0.7 * bound, alphas=(1.0,),
                        prompts=args.prompts, seed=1, max_batch=b, profile=profile)
        profiler = cProfile.Profile() if args.profile else None
        wall, cpu = time.perf_counter(), time.process_time()
        if profiler:
            profiler.enable()
        run = simulate(cfg)
        sim_wall, sim_cpu = time.perf_counter() - wall, time.process_time() - cpu
        wall, cpu = time.perf_counter(), time.process_time()
        summary = run.summary()
        if profiler:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(10)
        rows.append({
            "max_batch": b, "agents": args.agents, "prompts": args.prompts, "rate": cfg.rate,
            "simulate_wall_s": round(sim_wall, 1), "simulate_cpu_s": round(sim_cpu, 1),
            "summary_wall_s": round(time.perf_counter() - wall, 1), "summary_cpu_s": round(time.process_time() - cpu, 1),
            "mean_in_system": round(summary["mean_in_system"], 4), "latency_mean": round(summary["latency"]["mean"], 4),
        })
        print(json.dumps(rows[-1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
