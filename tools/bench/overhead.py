#!/usr/bin/env python3
"""What the mesh adds to inference: end-to-end latency / critical path of inference, on a local 4-agent mesh.

Critical path = per layer the slowest proposer's inference time, plus the final aggregation. Prompts go one after
another (no queueing), so the ratio is pure protocol + MQTT + scheduling overhead. Run:

    .venv/bin/python tools/bench/overhead.py [--prompts 50] [--service-s 0.5] [--real-prompts 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from edge_agent.config import DEFAULT_MODEL
from edge_agent.local.mesh import LocalMesh


def critical_path_s(answer: dict) -> float:
    return sum(max(e["inference_s"] for e in layer["answered"]) for layer in answer["trace"])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(mesh: LocalMesh, prompts: int, layers: int, proposers: int, max_new_tokens: int) -> dict:
    ratios, e2e, paths = [], [], []
    with mesh.client() as client:
        client.ask("agent1", "warm-up", layers=0, max_new_tokens=4, timeout_s=300)
        for i in range(prompts):
            device = mesh.devices[i % len(mesh.devices)]
            started = time.perf_counter()
            answer = client.ask(device, f"Question {i}: name a colour of the sea.", layers=layers,
                                proposers=proposers, max_new_tokens=max_new_tokens, timeout_s=600)
            elapsed = time.perf_counter() - started
            if "error" in answer:
                raise SystemExit(f"prompt {i} failed: {answer['error']}")
            path = critical_path_s(answer)
            ratios.append(elapsed / path)
            e2e.append(elapsed)
            paths.append(path)
    return {
        "prompts": prompts, "ratio_median": round(statistics.median(ratios), 4),
        "ratio_p95": round(percentile(ratios, 0.95), 4),
        "e2e_median_s": round(statistics.median(e2e), 4), "critical_path_median_s": round(statistics.median(paths), 4),
        "overhead_median_ms": round(1000 * statistics.median(a - b for a, b in zip(e2e, paths)), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--service-s", type=float, default=0.5, help="synthetic engine's service time")
    parser.add_argument("--real-prompts", type=int, default=10, help="0 skips the default-model run")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--proposers", type=int, default=2)
    args = parser.parse_args()
    results = {}
    print(f"synthetic engine, service {args.service_s}s, M={args.layers} k={args.proposers}, {args.prompts} prompts")
    with LocalMesh(4, engine={"kind": "synthetic", "synthetic_service_s": args.service_s}) as mesh:
        results["synthetic"] = measure(mesh, args.prompts, args.layers, args.proposers, args.max_new_tokens)
    print(json.dumps(results["synthetic"]))
    if args.real_prompts:
        from edge_agent.artifact.store import resolve_model_dir

        model = resolve_model_dir(DEFAULT_MODEL)
        print(f"default model {model}, 1 thread per agent, {args.real_prompts} prompts")
        with LocalMesh(4, engine={"model": str(model), "threads": 1}) as mesh:
            results["default_model"] = measure(mesh, args.real_prompts, args.layers, args.proposers,
                                               args.max_new_tokens)
        print(json.dumps(results["default_model"]))
    print(f"{'engine':<14} {'median':>8} {'p95':>8} {'overhead ms':>12}")
    for name, r in results.items():
        print(f"{name:<14} {r['ratio_median']:>8.4f} {r['ratio_p95']:>8.4f} {r['overhead_median_ms']:>12.2f}")
    print(json.dumps({"overhead_ratio_median": {k: v["ratio_median"] for k, v in results.items()},
                      "overhead_ratio_p95": {k: v["ratio_p95"] for k, v in results.items()}}))


if __name__ == "__main__":
    main()
