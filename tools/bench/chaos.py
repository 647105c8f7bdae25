#!/usr/bin/env python3
"""The chaos scenarios of tests/chaos, longer: real Mosquitto, real agent processes (synthetic engine), every prompt
counted. One line per scenario round, then one JSON line with `lost`, `duplicated`, `prompts`, `scenarios`.

    .venv/bin/python tools/bench/chaos.py [--rounds 3] [--prompts 300] [--fuzz 5000] [--rate 20]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from edge_agent.local.chaos import (
    ChaosConfig,
    scenario_broker_kill,
    scenario_fuzz,
    scenario_held_poison,
    scenario_kill,
    summary,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every scenario (each its own seed)")
    parser.add_argument("--prompts", type=int, default=300, help="prompts per load scenario and round")
    parser.add_argument("--fuzz", type=int, default=5000, help="fuzzed payloads per round")
    parser.add_argument("--rate", type=float, default=20.0, help="prompts per second sent")
    parser.add_argument("--keep-logs", type=Path, default=Path("chaos-logs"),
                        help="where the agent logs of a scenario with a traceback are kept")
    args = parser.parse_args(argv)
    outcomes = []
    started = time.monotonic()
    for round_ in range(args.rounds):
        cfg = ChaosConfig(prompts=args.prompts, fuzz=args.fuzz, rate_per_s=args.rate, seed=100 + round_,
                          drain_s=120.0)
        runs = [lambda d, c=cfg: [scenario_kill(c, d, victim="proposer")],
                lambda d, c=cfg: [scenario_kill(c, d, victim="origin")],
                lambda d, c=cfg: [scenario_broker_kill(c, d)],
                lambda d, c=cfg: list(scenario_fuzz(c, d)),
                lambda d, c=cfg: [scenario_held_poison(c, d)]]
        for run in runs:
            with tempfile.TemporaryDirectory(prefix="edge-moa-chaos-") as workdir:
                for outcome in run(Path(workdir)):
                    outcomes.append(outcome)
                    print(f"round {round_ + 1}: {outcome.line()}", flush=True)
                    if outcome.extra.get("tracebacks"):
                        kept = args.keep_logs / f"round{round_ + 1}-{len(outcomes)}"
                        shutil.copytree(workdir, kept, ignore=shutil.ignore_patterns("*.sqlite*"))
                        print(f"  agent logs with the traceback kept in {kept}", flush=True)
    result = summary(outcomes)
    result["wall_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(result))
    return 0 if result["lost"] == 0 and result["duplicated"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
