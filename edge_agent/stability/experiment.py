"""The live experiment's pure parts: grid, Poisson schedule, per-run statistics, CSV files and the Table I summary.

The I/O (a local mesh, the MQTT client) is in `live.py`; the figures in `plot.py`; the command in `commands.py`.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..config import EngineSection
from ..engine.batch_profile import BatchProfile, TokenCosts
from ..errors import ConfigError
from .planner import plan
from .simulator import SimConfig, simulate

PAPER_GRID = "0,0;1,1;1,2;2,1;2,2;1,3;2,3"
SYNTHETIC_BATCH_COST = EngineSection.model_fields["synthetic_batch_cost"].default


def parse_grid(text: str) -> list[tuple[int, int]]:
    """'0,0;1,2' -> [(0, 0), (1, 2)]: (M, k) pairs separated by ';'."""
    grid = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        try:
            m, k = (int(x) for x in part.split(","))
        except ValueError:
            raise ConfigError([("--grid", text, f"{part!r} is not 'M,k'")]) from None
        if m < 0 or k < 0:
            raise ConfigError([("--grid", text, f"{part!r}: M and k must be >= 0")])
        grid.append((m, k))
    if not grid:
        raise ConfigError([("--grid", text, "no configuration given")])
    return grid


def poisson_schedule(devices: list[str], rate: float, duration_s: float, seed: int) -> list[tuple[float, str]]:
    """Independent Poisson prompt streams of `rate` per second at every device over [0, duration): (t, device)."""
    rng = np.random.default_rng(seed)
    events: list[tuple[float, str]] = []
    for device in devices:
        # enough draws that the cumulative sum passes the horizon with overwhelming probability
        draws = int(rate * duration_s + 10 * math.sqrt(rate * duration_s + 1) + 10)
        times = np.cumsum(rng.exponential(1.0 / rate, size=draws))
        events += [(float(t), device) for t in times[times < duration_s]]
    return sorted(events)


class Inference(NamedTuple):
    device: str
    seconds: float
    step: int = 0  # 1-based position of its layer in the trace (1 = the first step); 0 = not recorded
    prompt_tokens: int = 0  # what its prefill read (0: not recorded)
    new_tokens: int = 0
    cached_tokens: int = 0  # of the prompt's, taken from the agent's prefix cache (not prefilled)


@dataclass
class PromptRecord:
    request_id: str
    device: str
    sent_at: float  # seconds since the run's start (client clock)
    answered_at: float | None = None
    agent_latency_s: float | None = None  # as the origin agent measured it
    inferences: int | None = None
    error: str | None = None
    inference_s: list[Inference] = field(default_factory=list)  # from the answer's trace

    @property
    def latency_s(self) -> float | None:
        return None if self.answered_at is None else self.answered_at - self.sent_at


@dataclass(frozen=True)
class QueueSample:
    t: float  # seconds since the run's start (agent clock = client clock on one machine)
    device: str
    queue_length: int  # tasks in the system: waiting + in service
    busy: bool


@dataclass(frozen=True)
class RunSpec:
    agents: int
    layers: int
    proposers: int
    rate: float
    duration_s: float
    alpha_s: float  # the synthetic engine's service time, or the model's measured mean
    engine: str = "synthetic"
    seed: int = 0
    warmup_s: float = 0.0
    alphas: tuple[float, ...] = ()  # synthetic service time per agent when they differ (then alpha_s = the max)
    policy: str = "uniform"  # the agents' moa.peer_policy
    candidates: int = 3  # the agents' moa.peer_candidates (speed-aware)
    max_batch: int = 1  # the agents' engine.max_batch (continuous batching past 1)
    batch_profile: str = ""  # alpha(b) per step (tools/bench/batching.py --out): the simulator's and the planner's
    profile_basis: str = "task"  # whole tasks (prefill priced) where the profile has them, else decode steps
    batch_slowdown: float = 0.0  # slowdown(max_batch) measured on the live agents (calibrate loaded); 0: the profile's
    threads: int = 1  # the agents' engine.threads
    cores: float = 0.0  # the cores the agents share (one machine); 0: each has its own (or a synthetic engine)
    step_stretch: float = 1.0  # the iteration model's batch cost as fitted to the agents (token_calibration.py)

    @property
    def name(self) -> str:
        suffix = "" if self.policy == "uniform" else f"_{self.policy}"
        return f"M{self.layers}_k{self.proposers}_rate{self.rate:.4g}{suffix}"


@dataclass
class RunStats:
    """What one live run measured, in the window [warmup, duration)."""

    spec: RunSpec
    prompts_sent: int
    prompts_answered: int
    errors: int
    latency_mean: float
    latency_p50: float
    latency_p95: float
    latency_p99: float
    mean_waiting: float  # time-average number waiting (queue_length - busy), averaged over agents
    mean_in_system: float  # time-average queue_length, averaged over agents
    utilization: float  # fraction of status samples with busy = true, busiest agent
    queue_growth_per_s: float  # least-squares slope of the mean queue length over the window
    inference_mean_s: float  # mean inference seconds in the answers' traces
    inferences_per_prompt: float
    sim: dict | None = None  # the simulator's prediction for the same configuration

    def row(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k not in ("spec", "sim")}
        out = {"layers": self.spec.layers, "proposers": self.spec.proposers, "rate": self.spec.rate,
               "duration_s": self.spec.duration_s, "alpha_s": self.spec.alpha_s, "engine": self.spec.engine, **out}
        if self.sim:
            out.update({"sim_mean_waiting": self.sim["mean_waiting"], "sim_mean_in_system": self.sim["mean_in_system"],
                        "sim_latency_mean": self.sim["latency"]["mean"],
                        "sim_queue_growth_per_s": self.sim["queue_growth_per_s"],
                        "sim_utilization": self.sim["utilization"]})
        return out


def run_stats(spec: RunSpec, prompts: list[PromptRecord], samples: list[QueueSample]) -> RunStats:
    t0, t1 = spec.warmup_s, spec.duration_s
    inside = [p for p in prompts if t0 <= p.sent_at < t1]
    lat = np.array([p.latency_s for p in inside if p.latency_s is not None and p.error is None])
    pct = np.percentile(lat, [50, 95, 99]) if lat.size else [math.nan] * 3
    window = [s for s in samples if t0 <= s.t < t1]
    devices = sorted({s.device for s in window})
    in_sys = [np.mean([s.queue_length for s in window if s.device == d]) for d in devices]
    waiting = [np.mean([s.queue_length - int(s.busy) for s in window if s.device == d]) for d in devices]
    busy = [np.mean([s.busy for s in window if s.device == d]) for d in devices]
    growth = math.nan
    if len(window) > 3:
        t = np.array([s.t for s in window])
        q = np.array([s.queue_length for s in window], dtype=float)
        growth = float(np.polyfit(t, q, 1)[0])  # pooled over agents: the slope of the agents' mean
    seconds = [i.seconds for p in prompts for i in p.inference_s]
    done = [p for p in prompts if p.inferences]
    return RunStats(
        spec=spec, prompts_sent=len(prompts), prompts_answered=sum(p.answered_at is not None for p in prompts),
        errors=sum(p.error is not None for p in prompts),
        latency_mean=float(lat.mean()) if lat.size else math.nan,
        latency_p50=float(pct[0]), latency_p95=float(pct[1]), latency_p99=float(pct[2]),
        mean_waiting=float(np.mean(waiting)) if waiting else math.nan,
        mean_in_system=float(np.mean(in_sys)) if in_sys else math.nan,
        utilization=float(max(busy)) if busy else math.nan,
        queue_growth_per_s=growth,
        inference_mean_s=float(np.mean(seconds)) if seconds else math.nan,
        inferences_per_prompt=float(np.mean([p.inferences for p in done])) if done else math.nan,
    )


# -- files --

def write_run_csv(out: Path, spec: RunSpec, prompts: list[PromptRecord], samples: list[QueueSample]) -> None:
    """`<name>.prompts.csv` (one row per prompt) and `<name>.queue.csv` (one row per status sample)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{spec.name}.prompts.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["request_id", "device", "sent_at", "answered_at", "latency_s", "agent_latency_s", "inferences",
                    "error", "inference_s"])
        for p in prompts:
            w.writerow([p.request_id, p.device, f"{p.sent_at:.4f}", _fmt(p.answered_at), _fmt(p.latency_s),
                        _fmt(p.agent_latency_s), p.inferences or "", p.error or "",
                        " ".join(_inference_text(i) for i in p.inference_s)])
    with open(out / f"{spec.name}.queue.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t", "device", "queue_length", "busy"])
        for s in samples:
            w.writerow([f"{s.t:.4f}", s.device, s.queue_length, int(s.busy)])
    (out / f"{spec.name}.spec.json").write_text(json.dumps(asdict(spec)))


def read_run_csv(out: Path, name: str) -> tuple[RunSpec, list[PromptRecord], list[QueueSample]]:
    fields = json.loads((out / f"{name}.spec.json").read_text())
    spec = RunSpec(**{**fields, "alphas": tuple(fields.get("alphas", ()))})
    prompts = []
    with open(out / f"{name}.prompts.csv", newline="") as f:
        for r in csv.DictReader(f):
            trace = [_inference(x) for x in r["inference_s"].split()]
            prompts.append(PromptRecord(
                request_id=r["request_id"], device=r["device"], sent_at=float(r["sent_at"]),
                answered_at=_num(r["answered_at"]), agent_latency_s=_num(r["agent_latency_s"]),
                inferences=int(r["inferences"]) if r["inferences"] else None, error=r["error"] or None,
                inference_s=trace))
    with open(out / f"{name}.queue.csv", newline="") as f:
        samples = [QueueSample(t=float(r["t"]), device=r["device"], queue_length=int(r["queue_length"]),
                               busy=r["busy"] == "1") for r in csv.DictReader(f)]
    return spec, prompts, samples


def service_samples(prompts: list[PromptRecord]) -> dict:
    """SimConfig keywords for the inference times a live run measured (first step and later steps apart)."""
    first = tuple(i.seconds for p in prompts for i in p.inference_s if i.step == 1)
    later = tuple(i.seconds for p in prompts for i in p.inference_s if i.step > 1)
    every = tuple(i.seconds for p in prompts for i in p.inference_s)
    if first and later and len(first) + len(later) == len(every):
        # the first step's prompt is short, later ones carry the previous answers: keep them apart
        return {"service": "empirical", "samples": first, "samples_synthesis": later}
    return {"service": "empirical", "samples": every}


def batch_profile(spec: RunSpec) -> BatchProfile | None:
    """The slowdown(b) the run's agents had: the profile given, else the synthetic engine's linear default."""
    if spec.batch_profile:
        if spec.profile_basis == "tokens":  # the iteration model prices steps itself (and shares the cores)
            return BatchProfile.read(spec.batch_profile, "step")
        profile = BatchProfile.read(spec.batch_profile, spec.profile_basis)
        return profile.calibrated(spec.max_batch, spec.batch_slowdown) if spec.batch_slowdown else profile
    if spec.engine == "synthetic" and spec.max_batch > 1:
        return BatchProfile.linear(SYNTHETIC_BATCH_COST, max(8, spec.max_batch))
    return None


def token_work(spec: RunSpec, prompts: list[PromptRecord]) -> dict:
    """SimConfig keywords of the iteration model for a live run: the profile's token costs and the (prompt, new)
    tokens of every task the run's answers traced, first step and later steps apart."""
    costs = TokenCosts.read(spec.batch_profile)
    if spec.step_stretch != 1.0:
        costs = costs.stretched(spec.step_stretch)
    first = tuple((i.prompt_tokens, i.new_tokens, i.cached_tokens) for p in prompts for i in p.inference_s
                  if i.step == 1 and i.prompt_tokens)
    later = tuple((i.prompt_tokens, i.new_tokens, i.cached_tokens) for p in prompts for i in p.inference_s
                  if i.step > 1 and i.prompt_tokens)
    if not first:
        raise ValueError(f"{spec.name}: the answers' traces carry no token counts (agents older than the iteration "
                         "model?): use --profile-basis task")
    return {"costs": costs, "tokens_first": first, "tokens_synthesis": later,
            "cores": spec.cores or None, "threads": spec.threads}


def predict(spec: RunSpec, prompts: list[PromptRecord], *, steady_prompts: int = 200_000,
            replays: int = 20) -> dict:
    """The simulator beside a live run, with the inference times that run measured. Two predictions:

    - the replay (the top-level keys, what the summary compares): the live run's own prompt schedule (same
      times, same users) through the simulated mesh, `replays` times with different service draws and peer
      choices, averaged. A short run sees its own arrival fluctuations; the replay shares them.
    - `steady`: the long-run averages at the nominal rate (the planner's world); above the bound, the same
      horizon as the live run, since the queue never settles.
    """
    every = [i.seconds for p in prompts for i in p.inference_s]
    if len(every) < 20:
        raise ValueError(f"{spec.name}: too few answered inferences ({len(every)}) to simulate with")
    devices = sorted({p.device for p in prompts} | {i.device for p in prompts for i in p.inference_s})
    index = {d: i for i, d in enumerate(devices + [f"agent-{i}" for i in range(spec.agents - len(devices))])}
    alphas: tuple[float, ...] = (float(np.mean(every)),)
    service = service_samples(prompts)
    if spec.alphas:  # mixed speeds: each agent's own measured mean (the synthetic engine is deterministic)
        alphas = tuple(float(np.mean([i.seconds for p in prompts for i in p.inference_s if i.device == d] or [a]))
                       for d, a in zip(devices, spec.alphas))
        service = {"service": "deterministic"} if spec.engine == "synthetic" else {
            "service": "empirical", "samples": tuple(every)}
    policy = {} if spec.policy == "uniform" else {
        "policy": spec.policy, "candidates": min(max(spec.candidates, spec.proposers), spec.agents - 1)}
    schedule = sorted((p.sent_at, index[p.device]) for p in prompts)
    arrivals = np.array([t for t, _ in schedule])
    users = np.array([u for _, u in schedule])
    profile = batch_profile(spec)
    batching = {"max_batch": spec.max_batch, "profile": profile} if spec.max_batch > 1 else {}
    if spec.profile_basis == "tokens":
        # the iteration model: the profile's token costs, the run's own tasks (prompt, new tokens), shared cores
        batching = {"max_batch": spec.max_batch, **token_work(spec, prompts)}
        alphas = spec.alphas or (spec.alpha_s,)
        service = {"service": "deterministic"}
    elif batching:
        # A batched task's measured seconds include its company's slowdown, which the simulator adds again from
        # the profile: feed it the solo alpha (b = 1: the synthetic engine's service time, or the model's time
        # measured alone by `calibrate`), keeping only the shape of the measured times (the simulator rescales
        # samples to mean alpha_i). Otherwise batching is counted twice.
        alphas = spec.alphas or (spec.alpha_s,)
        if spec.engine == "synthetic":
            service = {"service": "deterministic"}
        elif not spec.alphas and service.get("samples_synthesis"):
            # calibrate's alpha is a first-step task (a short prompt, M = 0); synthesis steps carry the previous
            # answers and take longer: keep their measured ratio, so the mix's mean is alpha x mean(all)/mean(1st)
            first = service["samples"]
            alphas = (spec.alpha_s * float(np.mean(every)) / float(np.mean(first)),)
    alpha = max(alphas)
    base = dict(agents=spec.agents, layers=spec.layers, proposers=spec.proposers, rate=spec.rate, alphas=alphas,
                **service, **policy, **batching)
    times = np.linspace(0.0, spec.duration_s, 201)
    window = (spec.warmup_s, spec.duration_s)
    runs = [simulate(SimConfig(**base, seed=spec.seed + 1 + r), arrivals=arrivals, users=users, window=window)
            for r in range(replays)]
    summaries = [r.summary() for r in runs]
    out = {
        "mean_waiting": float(np.mean([s["mean_waiting"] for s in summaries])),
        "mean_in_system": float(np.mean([s["mean_in_system"] for s in summaries])),
        "utilization": float(np.mean([s["utilization"] for s in summaries])),
        "queue_growth_per_s": float(np.mean([s["queue_growth_per_s"] for s in summaries])),
        "latency": {key: float(np.mean([s["latency"][key] for s in summaries])) for key in ("mean", "p50", "p95",
                                                                                          "p99")},
        "replays": replays,
        "simulated_alpha_s": alpha,
        "simulated_alphas": list(alphas),
        "trace_t": times.tolist(),
        "trace_in_system": np.mean([r.queue_trace(times).mean(axis=0) for r in runs], axis=0).tolist(),
    }
    planned = plan(agents=spec.agents, layers=spec.layers, proposers=spec.proposers, rate=spec.rate,
                   alphas=alphas, speed_aware=spec.policy != "uniform", max_batch=spec.max_batch, profile=profile)
    stable = planned.speed_aware.stable if planned.speed_aware else planned.stable
    if planned.batch is not None:
        stable = planned.batch.stable_speed_aware if planned.speed_aware else planned.batch.stable
    steady_n = steady_prompts if stable else max(10, round(spec.agents * spec.rate * spec.duration_s))
    if spec.profile_basis == "tokens":
        steady_n = min(steady_n, 20_000)  # a few events per task in Python: long enough for the averages
    steady = simulate(SimConfig(**base, prompts=steady_n, seed=spec.seed + 1,
                                warmup=min(spec.warmup_s / spec.duration_s, 0.5))).summary()
    steady.pop("per_agent")
    out["steady"] = steady
    if spec.profile_basis == "tokens":
        from .iteration_server import token_capacity

        out["token_capacity"] = token_capacity(
            batching["costs"], batching["tokens_first"], batching["tokens_synthesis"], agents=spec.agents,
            layers=spec.layers, proposers=spec.proposers, max_batch=spec.max_batch, cores=batching["cores"],
            threads=spec.threads)
    return out


def write_sim_json(out: Path, spec: RunSpec, sim: dict) -> None:
    (out / f"{spec.name}.sim.json").write_text(json.dumps(sim))


def load_results(out: Path) -> list[RunStats]:
    """Every run in `out`, re-derived from its CSVs (and the simulator's prediction, when saved)."""
    order = parse_grid(PAPER_GRID)
    runs = [read_run_csv(out, f.name[: -len(".spec.json")]) for f in out.glob("*.spec.json")]
    runs.sort(key=lambda r: (order.index((r[0].layers, r[0].proposers)) if (r[0].layers, r[0].proposers) in order
                             else len(order), r[0].layers, r[0].proposers, r[0].rate, r[0].policy != "uniform"))
    results = []
    for spec, prompts, samples in runs:
        name = spec.name
        stats = run_stats(spec, prompts, samples)
        sim_file = out / f"{name}.sim.json"
        stats.sim = json.loads(sim_file.read_text()) if sim_file.exists() else None
        results.append(stats)
    return results


def _inference_text(i: Inference) -> str:
    text = f"{i.device}:{i.step}:{i.seconds:.4f}"
    if i.cached_tokens:
        return f"{text}:{i.prompt_tokens}:{i.new_tokens}:{i.cached_tokens}"
    return f"{text}:{i.prompt_tokens}:{i.new_tokens}" if i.prompt_tokens else text


def _inference(text: str) -> Inference:
    """`device:step:seconds:prompt_tokens:new_tokens[:cached_tokens]`, or without the tokens (runs before they
    were traced), or `device:seconds` as the first runs wrote it."""
    parts = text.split(":")
    if len(parts) == 2:
        return Inference(parts[0], float(parts[1]))
    if len(parts) == 6:
        return Inference(parts[0], float(parts[2]), int(parts[1]), int(parts[3]), int(parts[4]), int(parts[5]))
    if len(parts) == 5:
        return Inference(parts[0], float(parts[2]), int(parts[1]), int(parts[3]), int(parts[4]))
    return Inference(parts[0], float(parts[2]), int(parts[1]))


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def _num(text: str) -> float | None:
    return float(text) if text else None


def write_summary(out: Path, stats: list[RunStats]) -> str:
    """summary.csv, summary.json and summary.md (Table I's shape, with the simulator beside); returns the table."""
    rows = [s.row() for s in stats]
    out.mkdir(parents=True, exist_ok=True)
    if rows:
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with open(out / "summary.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
    (out / "summary.json").write_text(json.dumps(rows, indent=1))
    table = summary_table(stats)
    (out / "summary.md").write_text(table + "\n")
    return table


def _policy(spec: RunSpec) -> str:
    return "" if spec.policy == "uniform" else f", {spec.policy}"


def summary_table(stats: list[RunStats]) -> str:
    """A Markdown table shaped like the paper's Table I (accuracy is left to the evaluation work)."""
    head = ("| MoA configuration | lambda/s | utilisation | latency s (live) | latency s (sim) "
            "| avg queue (live) | avg queue (sim) | in system (live) | in system (sim) | diff | trend /s |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for s in stats:
        sim = s.sim or {}
        sim_w, sim_l = sim.get("mean_waiting", math.nan), sim.get("mean_in_system", math.nan)
        diff = (s.mean_in_system / sim_l - 1) if sim_l and not math.isnan(sim_l) else math.nan
        lines.append(
            f"| M = {s.spec.layers}, k = {s.spec.proposers}{_policy(s.spec)} | {s.spec.rate:.4g} | {s.utilization:.2f} "
            f"| {s.latency_mean:.3g} | {sim.get('latency', {}).get('mean', math.nan):.3g} "
            f"| {s.mean_waiting:.3g} | {sim_w:.3g} | {s.mean_in_system:.3g} | {sim_l:.3g} "
            f"| {100 * diff:+.0f}% | {s.queue_growth_per_s:+.3g} |")
    return "\n".join(lines)
