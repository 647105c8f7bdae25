"""PNG figures of an experiment, drawn from its CSV files: `python -m edge_agent.stability.plot DIR`."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from .experiment import RunStats, load_results, read_run_csv
from .planner import inferences_per_prompt


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(s: RunStats) -> str:
    policy = "" if s.spec.policy == "uniform" else f"\n{s.spec.policy}"
    return f"M={s.spec.layers},k={s.spec.proposers}\nλ={s.spec.rate:.3g}{policy}"


def plot_all(out: Path, results: list[RunStats]) -> list[Path]:
    if not results:
        return []
    return [plot_queues(out, results), plot_latency(out, results), plot_sim_vs_live(out, results)]


def plot_queues(out: Path, results: list[RunStats]) -> Path:
    """Queue length (waiting + in service) over time at every agent, the agents' mean, and the simulator's."""
    plt = _pyplot()
    cols = min(len(results), 3)
    rows = math.ceil(len(results) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
    for ax, s in zip(axes.flat, results):
        _, _, samples = read_run_csv(out, s.spec.name)
        devices = sorted({x.device for x in samples})
        grid = np.arange(0.0, s.spec.duration_s, 0.25)
        series = []
        for d in devices:
            t = np.array([x.t for x in samples if x.device == d])
            q = np.array([x.queue_length for x in samples if x.device == d], dtype=float)
            if t.size:
                ax.plot(t, q, lw=0.6, alpha=0.5, label=d)
                series.append(np.interp(grid, t, q))
        if series:
            ax.plot(grid, np.mean(series, axis=0), color="black", lw=1.4, label="live mean")
        sim = s.sim or {}
        if "trace_t" in sim:
            ax.plot(sim["trace_t"], sim["trace_in_system"], "r--", lw=1.2,
                    label=f"simulator, same arrivals ({sim.get('replays', 1)} runs)")
        steady = sim.get("steady", sim if "trace_t" not in sim else {})
        if "mean_in_system" in steady and steady.get("queue_growth_per_s", 0) < 1e-3:
            ax.axhline(steady["mean_in_system"], color="purple", ls=":", lw=1.4, label="simulator, long run")
        ax.axvline(s.spec.warmup_s, color="grey", ls=":", lw=0.8)
        spec = s.spec
        rho = spec.rate * spec.alpha_s * inferences_per_prompt(spec.layers, spec.proposers)
        title = f"M={spec.layers}, k={spec.proposers}, λ={spec.rate:.3g}/s, "
        if spec.policy != "uniform" or spec.alphas:
            title += f"{spec.policy}, alphas {','.join(f'{a:g}' for a in spec.alphas or (spec.alpha_s,))}\n"
        title += f"ρ={rho:.2f} planned (slowest agent), busiest {s.utilization:.2f}"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("tasks in queue")
    for ax in list(axes.flat)[len(results):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="upper left")
    return _save(plt, fig, out / "queue_over_time.png")


def plot_latency(out: Path, results: list[RunStats]) -> Path:
    """Prompt latency by configuration: the live distribution (box) and the simulator's mean (red marker)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(results)), 3.8))
    data = []
    for s in results:
        _, prompts, _ = read_run_csv(out, s.spec.name)
        data.append([p.latency_s for p in prompts
                     if p.latency_s is not None and p.error is None and p.sent_at >= s.spec.warmup_s])
    ax.boxplot([d or [math.nan] for d in data], showfliers=False)
    ax.set_xticks(range(1, len(results) + 1), [_label(s) for s in results], fontsize=8)
    sims = [(s.sim or {}).get("latency", {}).get("mean", math.nan) for s in results]
    ax.plot(range(1, len(results) + 1), [s.latency_mean for s in results], "k^", label="live mean")
    ax.plot(range(1, len(results) + 1), sims, "r_", ms=18, mew=2, label="simulator mean")
    ax.set_ylabel("latency (s)")
    ax.set_title("prompt latency by MoA configuration")
    ax.legend(fontsize=8)
    return _save(plt, fig, out / "latency_by_config.png")


def plot_sim_vs_live(out: Path, results: list[RunStats]) -> Path:
    """Average queue size (waiting, as the paper's Table I) and in system: live beside the simulator."""
    plt = _pyplot()
    x = np.arange(len(results))
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 2.2 * len(results)), 3.8))
    for ax, key, title in ((axes[0], "mean_waiting", "average number waiting (Table I's queue size)"),
                           (axes[1], "mean_in_system", "average number in system")):
        live = [getattr(s, key) for s in results]
        sim = [(s.sim or {}).get(key, math.nan) for s in results]
        ax.bar(x - 0.2, live, 0.4, label="live")
        ax.bar(x + 0.2, sim, 0.4, label="simulator")
        ax.set_xticks(x, [_label(s) for s in results], fontsize=8)
        values = [v for v in live + sim if not math.isnan(v) and v > 0]
        if values and max(values) > 50 * min(values):  # stable and overloaded runs side by side
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
    return _save(plt, fig, out / "sim_vs_live.png")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m edge_agent.stability.plot EXPERIMENT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    for path in plot_all(out, load_results(out)):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
