#!/usr/bin/env python3
"""A large synthetic mesh on a bridge tree of brokers, every prompt counted (issue 14 item 5); one JSON report.

    flock /tmp/edge-moa-cpu.lock .venv/bin/python tools/bench/scale.py --agents 64 --brokers 8 --duration 300
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from edge_agent.stability.scale import ScaleConfig, run_scale, simulated


def status_decode_us(n: int = 20000) -> float:
    """Microseconds to decode and validate one agent status, as every agent does for every peer's heartbeat."""
    from edge_agent.wire.messages import Status, decode_status, encode

    payload = encode(Status(device="agent17", online=True, model_id="synthetic", alpha_s=1.0, queue_length=3,
                            queue_bytes=12345, queue_cap_bytes=10**9, memory_available_bytes=10**10, busy=True,
                            healthy=True, version="0.1.0", uptime_s=123.4, heartbeat_s=1.0, answered=10, failed=0,
                            served=40, latency_p50_s=2.5, sent_at=time.time()))
    t = time.perf_counter()
    for _ in range(n):
        decode_status(payload)
    return round((time.perf_counter() - t) / n * 1e6, 2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = ScaleConfig()
    p.add_argument("--agents", "-n", type=int, default=d.agents)
    p.add_argument("--brokers", type=int, default=d.brokers, help="brokers in the bridge tree")
    p.add_argument("--fanout", type=int, default=d.fanout, help="children per broker in the tree")
    p.add_argument("--layers", "-M", type=int, default=d.layers)
    p.add_argument("--proposers", "-k", type=int, default=d.proposers)
    p.add_argument("--alpha", type=float, default=d.alpha_s, help="synthetic service seconds")
    p.add_argument("--load", type=float, default=d.load, help="fraction of Theorem 1's bound")
    p.add_argument("--duration", type=float, default=d.duration_s, help="seconds of prompts")
    p.add_argument("--drain", type=float, default=d.drain_s, help="seconds to wait for answers after the prompts")
    p.add_argument("--late", type=float, default=d.late_s, help="then seconds to listen for late answers")
    p.add_argument("--idle", type=float, default=d.idle_s, help="seconds of status traffic alone, measured first")
    p.add_argument("--heartbeat", type=float, default=d.heartbeat_s, help="agent.heartbeat_s")
    p.add_argument("--heartbeat-scale-from", type=int, default=None,
                   help="agent.heartbeat_scale_from (default: the agent's; a huge value turns the scaling off)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workdir", type=Path, default=None, help="agents' logs and journals (kept)")
    p.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cfg = ScaleConfig(agents=args.agents, brokers=args.brokers, fanout=args.fanout, layers=args.layers,
                      proposers=args.proposers, alpha_s=args.alpha, load=args.load, duration_s=args.duration,
                      drain_s=args.drain, late_s=args.late, idle_s=args.idle, heartbeat_s=args.heartbeat,
                      heartbeat_scale_from=args.heartbeat_scale_from, seed=args.seed,
                      workdir=str(args.workdir) if args.workdir else None)
    report = run_scale(cfg, progress=lambda line: print(line, file=sys.stderr, flush=True))
    t = time.process_time()
    report["simulated"] = simulated(cfg)
    report["simulated"]["cpu_s"] = round(time.process_time() - t, 2)
    report["status_decode_us"] = status_decode_us()
    text = json.dumps(report, indent=1, default=str)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    ok = report.get("lost", 1) == 0 and report.get("duplicated", 1) == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
