"""Redo the simulator's side of a finished live experiment from its CSVs, then its summary and figures.

`python tools/experiments/resimulate.py DIR [DIR ...]` (e.g. after a change to the simulator or to `predict`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from edge_agent.stability.experiment import load_results, predict, read_run_csv, write_sim_json, write_summary
from edge_agent.stability.plot import plot_all


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    for arg in argv:
        out = Path(arg)
        results = load_results(out)
        for stats in results:
            _, prompts, _ = read_run_csv(out, stats.spec.name)
            stats.sim = predict(stats.spec, prompts)
            write_sim_json(out, stats.spec, stats.sim)
        print(f"{out}:\n{write_summary(out, results)}\n")
        plot_all(out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
