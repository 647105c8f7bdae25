"""The live experiment's I/O: a local mesh (broker + agent processes), Poisson prompts, status samples.

Queue lengths come from the agents' retained status (`queue_length` = waiting + in service, `busy`), published
every `heartbeat_s`; periodic samples give the time-average without bias. Latency is measured at the client.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from ..errors import InferenceError, ProtocolError
from .experiment import (
    Inference,
    PromptRecord,
    QueueSample,
    RunSpec,
    RunStats,
    poisson_schedule,
    predict,
    run_stats,
    write_run_csv,
    write_sim_json,
)
from .planner import plan

log = logging.getLogger(__name__)

PROMPTS = [
    "What is the capital of France?",
    "Give one tip for saving energy at home.",
    "Why is the sky blue?",
    "Name a prime number larger than ten.",
]


def advertised_alphas(*, host: str, port: int, topic_root: str = "moa/v1", wait_s: float = 2.0) -> dict[str, float]:
    """The mean inference seconds each online agent advertises in its retained status."""
    from ..mqtt.client import MoaClient
    from ..mqtt.transport import BrokerSettings

    with MoaClient(BrokerSettings(host=host, port=port), topic_root=topic_root) as client:
        client.watch_status()
        time.sleep(wait_s)
        return {d: s.alpha_s for d, s in client.statuses().items() if s.online and s.alpha_s}


@dataclass(frozen=True)
class ExperimentSettings:
    agents: int
    grid: list[tuple[int, int]]
    rates: list[float] | None  # lambda per user, or
    loads: list[float] | None  # fractions of each configuration's Theorem 1 bound
    duration_s: float
    engine: str
    alpha_s: float | None  # synthetic: the service time; onnx: None = measure it first (`calibrate`)
    out: Path
    model: str | None = None
    max_new_tokens: int = 16
    threads: int = 1
    warmup_s: float | None = None
    drain_timeout_s: float | None = None
    seed: int = 0
    sim_prompts: int = 200_000
    progress: bool = True
    heartbeat_s: float = 0.25
    alphas: tuple[float, ...] = ()  # synthetic: one service time per agent (mixed speeds); alpha_s = their max
    policies: tuple[str, ...] = ("uniform",)  # the agents' moa.peer_policy; each run is done once per policy
    candidates: int = 3  # the agents' moa.peer_candidates
    max_batch: int = 1  # the agents' engine.max_batch (1: no batching, the paper's queue)
    batch_profile: str = ""  # alpha(b) per step: the synthetic agents' step costs, the simulator's and planner's
    profile_basis: str = "task"  # how the simulator and planner read the profile (engine/batch_profile.py)
    calibration: str = "solo"  # onnx without --alpha: how alpha is measured first ("solo" or "loaded")
    models: tuple[str, ...] = ()  # onnx: one model per agent (a mixed mesh); alpha is then measured per agent
    batch_slowdown: float = 0.0  # slowdown(max_batch) measured under load by `calibrate` (0: the profile's own)
    cores: float = 0.0  # --profile-basis tokens: effective cores the agents share (0: fitted on the mesh first)
    step_stretch: float = 1.0  # --profile-basis tokens: the batch cost's stretch, fitted with `cores`
    prefix_cache_mb: int | None = None  # onnx: the agents' engine.prefix_cache_mb (None: the config's default)

    def specs(self) -> list[RunSpec]:
        out = []
        alphas = self.alphas or (self.alpha_s,)
        for m, k in self.grid:
            # --load is relative to the paper's bound (eq. 6), whatever the policy
            bound = plan(agents=self.agents, layers=m, proposers=k, rate=1.0, alphas=alphas).max_rate
            rates = self.rates or [f * bound for f in self.loads]
            for rate in rates:
                for policy in self.policies:
                    out.append(RunSpec(
                        agents=self.agents, layers=m, proposers=k, rate=rate, duration_s=self.duration_s,
                        alpha_s=max(alphas), engine=self.engine, seed=self.seed,
                        warmup_s=self.warmup_s if self.warmup_s is not None else 0.1 * self.duration_s,
                        alphas=self.alphas, policy=policy, candidates=self.candidates,
                        max_batch=self.max_batch, batch_profile=self.batch_profile,
                        profile_basis=self.profile_basis, batch_slowdown=self.batch_slowdown,
                        threads=self.threads, cores=self._cores(), step_stretch=self.step_stretch))
        return out

    def _cores(self) -> float:
        """What the agents share: as fitted, else the machine's count for a real model (the synthetic engine
        sleeps: it shares nothing)."""
        if self.cores:
            return self.cores
        return float(os.cpu_count() or 1) if self.engine == "onnx" else 0.0


def mesh_sections(s: ExperimentSettings) -> dict:
    """Agent config for the experiment: big queue bound and timeouts, so overload shows as queues, not errors."""
    if s.engine == "synthetic":
        engine = {"kind": "synthetic", "synthetic_service_s": s.alpha_s, "warmup": False}
    else:
        engine = {"kind": "onnx", "threads": s.threads, **({"model": s.model} if s.model else {})}
        if s.prefix_cache_mb is not None:
            engine["prefix_cache_mb"] = s.prefix_cache_mb
    # One task at a time, as Theorem 1 and the simulator assume, unless batching is what is being measured.
    engine["max_batch"] = s.max_batch
    if s.batch_profile and s.engine == "synthetic":
        engine["synthetic_batch_profile"] = s.batch_profile
    horizon = 10 * s.duration_s + 600
    return {
        "engine": engine,
        "moa": {"max_new_tokens": s.max_new_tokens, "max_layers": max(3, *(m for m, _ in s.grid)),
                "max_proposers": max(4, *(k for _, k in s.grid)), "task_grace_s": horizon,
                "request_timeout_s": horizon},
        "queue": {"max_tasks": 1_000_000},
        "agent": {"heartbeat_s": s.heartbeat_s, "peer_timeout_s": 30.0},
    }


def _mesh(s: ExperimentSettings, policy: str):
    """A local mesh for one policy; with per-agent alphas, a synthetic mesh of mixed speeds."""
    from ..local.mesh import LocalMesh

    sections = mesh_sections(s)
    sections["moa"] = {**sections["moa"], "peer_policy": policy, "peer_candidates": s.candidates}
    if s.models:
        per_agent = {f"agent{i}": {"model": m} for i, m in enumerate(s.models, start=1)}
    elif s.alphas and s.engine == "synthetic":
        per_agent = {f"agent{i}": {"synthetic_service_s": a} for i, a in enumerate(s.alphas, start=1)}
    else:
        return LocalMesh(s.agents, **sections, log_level="-v")
    return LocalMesh(s.agents, **sections, log_level="-v", engine_per_agent=per_agent)


def run_experiment(s: ExperimentSettings) -> list[RunStats]:
    """Every run of the grid, one mesh per policy (queues drain between runs); CSVs, summary and plots in s.out."""
    from . import plot
    from .experiment import write_summary

    results: list[RunStats] = []
    for policy in s.policies:
        with _mesh(s, policy) as mesh:
            if s.alpha_s is None:
                s = calibrated(s, calibrate(mesh, s), mesh.devices)
                log.info("measured alpha: %.3fs per inference%s", s.alpha_s,
                         f" (per agent: {', '.join(f'{a:.3f}' for a in s.alphas)})" if s.alphas else "")
                if s.calibration == "loaded" and s.max_batch > 1 and s.batch_profile and s.profile_basis != "tokens":
                    s = replace(s, batch_slowdown=batch_slowdown(mesh, s))
                    log.info("measured slowdown at b = %d under load: %.2f", s.max_batch, s.batch_slowdown)
            if s.profile_basis == "tokens" and not s.cores:
                s = replace(s, **fit_token_model(mesh, s))
                log.info("iteration model fitted to the agents: %.2f effective cores, batch cost x%.2f",
                         s.cores, s.step_stretch)
            for spec in (x for x in s.specs() if x.policy == policy):
                results.append(_run(mesh, spec, s))
    results.sort(key=lambda r: (s.grid.index((r.spec.layers, r.spec.proposers)), r.spec.rate,
                                s.policies.index(r.spec.policy)))
    table = write_summary(s.out, results)
    plot.plot_all(s.out, results)
    print(table)
    return results


def _run(mesh, spec: RunSpec, s: ExperimentSettings) -> RunStats:
    """One live run, its files, its statistics and the simulator beside it."""
    prompts, samples = run_live(mesh, spec, s)
    write_run_csv(s.out, spec, prompts, samples)
    stats = run_stats(spec, prompts, samples)
    try:
        stats.sim = predict(spec, prompts, steady_prompts=s.sim_prompts)
    except ValueError as exc:  # e.g. nothing answered within the drain: the run is kept, without a prediction
        log.warning("%s: no simulator prediction: %s", spec.name, exc)
        return stats
    write_sim_json(s.out, spec, stats.sim)
    log.info("%s: live queue %.3f (sim %.3f), latency %.3fs (sim %.3fs)", spec.name, stats.mean_in_system,
             stats.sim["mean_in_system"], stats.latency_mean, stats.sim["latency"]["mean"])
    return stats


def calibrated(s: ExperimentSettings, seconds: dict[str, list[float]], devices: list[str]) -> ExperimentSettings:
    """The settings with the measured alpha: one mean for a mesh of one model; for a mixed mesh each agent's own
    (`alphas`, in device order) and their max as alpha_s, which is what Theorem 1's uniform bound is set by."""
    every = [x for d in devices for x in seconds.get(d, [])]
    if not every:
        raise InferenceError("calibration got no inference times back from the agents")
    if not s.models or len(set(s.models)) == 1:
        return replace(s, alpha_s=sum(every) / len(every))
    missing = [d for d in devices if not seconds.get(d)]
    if missing:
        raise InferenceError(f"calibration got no inference times from {', '.join(missing)}")
    alphas = tuple(sum(seconds[d]) / len(seconds[d]) for d in devices)
    return replace(s, alphas=alphas, alpha_s=max(alphas))


def loaded_tasks(mesh, s: ExperimentSettings, per_agent: int, rounds: int = 2) -> list[list[list[tuple]]]:
    """`per_agent` tasks sent to every agent at once (M = 0), `rounds` times after one round of warm-up: per
    round, per agent, (prompt tokens, new tokens, seconds, prompt tokens from the prefix cache) of each."""
    out = []
    with mesh.client() as client:
        for r in range(rounds + 1):
            sent = [(d, client.submit(d, PROMPTS[(r + j) % len(PROMPTS)], layers=0, proposers=0,
                                      max_new_tokens=s.max_new_tokens))
                    for j in range(per_agent) for d in mesh.devices]
            answered = [(d, f.result(timeout=900)) for d, f in sent]
            if not r:
                continue  # warm-up
            per_agent_tasks: dict[str, list[tuple]] = {d: [] for d in mesh.devices}
            for d, answer in answered:
                per_agent_tasks[d] += [(int(e.get("prompt_tokens") or 0), int(e.get("new_tokens") or 0),
                                        float(e["inference_s"]), int(e.get("cached_tokens") or 0))
                                       for layer in answer.get("trace", []) for e in layer["answered"]
                                       if e.get("inference_s") is not None]
            out.append([per_agent_tasks[d] for d in mesh.devices])
    tasks = [t for agents in out for mine in agents for t in mine]
    if not tasks or not all(t[0] for t in tasks):
        raise InferenceError("the calibration's answers carry no token counts (agents older than the iteration "
                             "model?): use --profile-basis task")
    return out


def fit_token_model(mesh, s: ExperimentSettings) -> dict:
    """ExperimentSettings keywords (`cores`, `step_stretch`) that make the iteration model take, on these agents,
    what one task at every agent at once and max_batch at every agent at once took (token_calibration.py)."""
    from ..engine.batch_profile import TokenCosts
    from .token_calibration import effective_cores, step_stretch

    costs = TokenCosts.read(s.batch_profile)
    one = loaded_tasks(mesh, s, 1, rounds=5)  # a few seconds a round; the queues past the bound hang on this figure
    cores = effective_cores(costs, one, s.threads)
    stretch, full = 1.0, []
    if s.max_batch > 1:
        full = loaded_tasks(mesh, s, s.max_batch)
        stretch = step_stretch(costs, full, s.max_batch, cores, s.threads)
    s.out.mkdir(parents=True, exist_ok=True)
    (s.out / "calibration.json").write_text(json.dumps({
        "cores": cores, "step_stretch": stretch, "machine_cores": os.cpu_count(), "profile": s.batch_profile,
        "one_per_agent": one, "max_batch_per_agent": full}))
    return {"cores": cores, "step_stretch": stretch}


def batch_slowdown(mesh, s: ExperimentSettings, rounds: int = 2) -> float:
    """How much longer a task takes when every agent serves max_batch at once than alpha (one each at once), on
    these agents: where several share a machine's cores they batch worse than the profile's lone process (cache,
    memory bandwidth, the agents' own threads), and the simulator must know by how much (docs/stability.md 6f)."""
    seconds: list[float] = []
    with mesh.client() as client:
        for r in range(rounds):
            futures = [client.submit(d, PROMPTS[(r + j) % len(PROMPTS)], layers=0, proposers=0,
                                     max_new_tokens=s.max_new_tokens)
                       for j in range(s.max_batch) for d in mesh.devices]
            seconds += [e["inference_s"] for f in futures for layer in f.result(timeout=900).get("trace", [])
                        for e in layer["answered"] if e.get("inference_s") is not None]
    if not seconds or not s.alpha_s:
        raise InferenceError("batch calibration got no inference times back from the agents")
    return max(1.0, sum(seconds) / len(seconds) / s.alpha_s)


def calibrate(mesh, s: ExperimentSettings, per_agent: int = 3) -> dict[str, list[float]]:
    """Inference seconds of one task alone in its agent's engine (b = 1), per agent, from prompts answered alone
    (M = 0).

    `solo`: each agent in turn, the rest of the mesh idle. `loaded`: one prompt at every agent at once, so each
    agent still runs one task at a time but shares the machine's cores with the others, as under load: the alpha
    of one board when several agents share a machine's cores (4 agents on 2 cores here; docs/stability.md 6e).
    """
    seconds: dict[str, list[float]] = {}

    def keep(answer: dict) -> None:
        for layer in answer.get("trace", []):
            for e in layer["answered"]:
                if e.get("inference_s") is not None:
                    seconds.setdefault(e["device"], []).append(e["inference_s"])

    with mesh.client() as client:
        for i in range(per_agent + (1 if s.calibration == "loaded" else 0)):
            prompt = PROMPTS[i % len(PROMPTS)]
            if s.calibration == "loaded":
                futures = [client.submit(d, prompt, layers=0, proposers=0, max_new_tokens=s.max_new_tokens)
                           for d in mesh.devices]
                answers = [f.result(timeout=600) for f in futures]
                if i > 0:  # the first round warms every agent up
                    for answer in answers:
                        keep(answer)
                continue
            for device in mesh.devices:
                keep(client.ask(device, prompt, layers=0, proposers=0, max_new_tokens=s.max_new_tokens,
                                timeout_s=600))
    return seconds


def run_live(mesh, spec: RunSpec, s: ExperimentSettings) -> tuple[list[PromptRecord], list[QueueSample]]:
    """Poisson prompts at every agent for spec.duration_s, then wait for the answers; returns what was seen."""
    schedule = poisson_schedule(mesh.devices, spec.rate, spec.duration_s, spec.seed)
    samples: list[QueueSample] = []
    records: list[PromptRecord] = []
    pending: list[Future] = []
    bar = _progress(len(schedule), spec.name, s.progress)
    lock = threading.Lock()

    with mesh.client() as client:
        start = time.time()

        def on_status(status) -> None:
            if status.online and status.sent_at and status.queue_length is not None and status.sent_at >= start:
                with lock:
                    samples.append(QueueSample(t=status.sent_at - start, device=status.device,
                                               queue_length=status.queue_length, busy=bool(status.busy)))

        client.watch_status(on_status)
        for i, (t, device) in enumerate(schedule):
            delay = start + t - time.time()
            if delay > 0:
                time.sleep(delay)
            rec = PromptRecord(request_id=f"{spec.name}-{spec.seed}-{i}", device=device,
                               sent_at=time.time() - start)
            records.append(rec)
            future = client.submit(device, PROMPTS[i % len(PROMPTS)], request_id=rec.request_id,
                                   layers=spec.layers, proposers=spec.proposers, max_new_tokens=s.max_new_tokens)
            future.add_done_callback(partial(_on_answer, rec, start, bar))
            pending.append(future)
        remaining = spec.duration_s - (time.time() - start)
        if remaining > 0:
            time.sleep(remaining)
        drain = s.drain_timeout_s if s.drain_timeout_s is not None else 2 * spec.duration_s + 60
        deadline = time.time() + drain
        while time.time() < deadline and not all(f.done() for f in pending):
            time.sleep(0.2)
        if bar is not None:
            bar.close()
        unanswered = sum(not f.done() for f in pending)
        if unanswered:
            log.warning("%s: %d prompts unanswered after a %.0fs drain", spec.name, unanswered, drain)
        with lock:
            return list(records), sorted(samples, key=lambda x: x.t)


def _on_answer(rec: PromptRecord, start: float, bar, future: Future) -> None:
    rec.answered_at = time.time() - start
    try:
        answer = future.result()
    except ProtocolError as exc:  # a malformed answer: recorded, the run goes on
        rec.error = type(exc).__name__
        return
    if "error" in answer:
        rec.error = answer["error"].get("code", "error")
    else:
        rec.agent_latency_s = answer.get("latency_s")
        rec.inferences = answer.get("inferences")
        rec.inference_s = [Inference(e["device"], float(e["inference_s"]), step, int(e.get("prompt_tokens") or 0),
                                     int(e.get("new_tokens") or 0), int(e.get("cached_tokens") or 0))
                           for step, layer in enumerate(answer.get("trace", []), start=1)
                           for e in layer.get("answered", []) if e.get("inference_s") is not None]
    if bar is not None:
        bar.update(1)


def _progress(total: int, name: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=name, unit="answer", dynamic_ncols=True)
