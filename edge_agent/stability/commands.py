"""The `plan`, `simulate` and `experiment` sub-commands of `edge-moa`; `register` is called by edge_agent.cli."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from ..errors import ConfigError, EdgeMoaError
from ..host_port import parse_host_port
from .experiment import PAPER_GRID
from .planner import Plan, plan
from .simulator import POLICIES, SimConfig, read_samples, simulate


def _alphas(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds or a comma-separated list of seconds, got {text!r}")
    return values


def _broker(text: str) -> tuple[str, int]:
    try:
        return parse_host_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def _mesh_arguments(p: argparse.ArgumentParser, *, alpha_required: bool = True) -> None:
    p.add_argument("--agents", "-n", type=int, required=True, help="number of agents n")
    p.add_argument("--layers", "-M", type=int, required=True, help="MoA layers M (0: the origin answers alone)")
    p.add_argument("--proposers", "-k", type=int, required=True, help="extra proposers k per layer (< n)")
    p.add_argument("--rate", type=float, required=True, help="prompts per second at every user (lambda)")
    p.add_argument("--alpha", type=_alphas, required=alpha_required, metavar="A|A1,A2,...",
                   help="mean inference seconds: one for every agent, or one per agent")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _batch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-batch", type=int, default=None,
                   help="tasks an agent decodes together, continuously (default 1, the paper's FCFS; with "
                        "--batch-profile alone: the profile's best)")
    p.add_argument("--batch-profile", type=Path, default=None, metavar="FILE",
                   help="alpha(b) per decode step (tools/bench/batching.py --out); without it a batch of b "
                        "costs what one task does")
    _basis_argument(p, tokens=True, traced=False)
    p.add_argument("--tokens", type=_token_pair, default=None, metavar="P,D[,C]",
                   help="--profile-basis tokens: a first-step task's prompt tokens and new tokens (and C of the "
                        "prompt's from the agent's prefix cache, not prefilled)")
    p.add_argument("--synthesis-tokens", type=_token_pair, default=None, metavar="P,D[,C]",
                   help="--profile-basis tokens: a later step's (the prompt carries the answers; default "
                        "P + (k+1) x D of --tokens, and D; e.g. C = 128: SmolLM2's synthesis prompt start, "
                        "engine.prefix_cache_mb)")
    p.add_argument("--cores", type=float, default=None,
                   help="--profile-basis tokens: the agents share this many cores (one machine); default a "
                        "board each")
    p.add_argument("--threads", type=int, default=1, help="with --cores: inference threads per agent")


def _token_pair(text: str) -> tuple[int, ...]:
    """P,D or P,D,C: prompt tokens, new tokens, and of the prompt's the C its agent's prefix cache holds."""
    try:
        numbers = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: whole numbers P,D or P,D,C") from None
    if len(numbers) not in (2, 3):
        raise argparse.ArgumentTypeError(f"{text!r}: two or three whole numbers P,D[,C]")
    if numbers[0] < 1 or numbers[1] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: P and D at least 1")
    if len(numbers) == 3 and not 0 <= numbers[2] < numbers[0]:
        raise argparse.ArgumentTypeError(f"{text!r}: C (prompt tokens from the prefix cache) in [0, P)")
    return numbers


def _basis_argument(p: argparse.ArgumentParser, *, tokens: bool = False, traced: bool = True) -> None:
    tasks = "tasks as the run's answers traced them (prompt and new tokens)" if traced else "tasks of --tokens"
    help_tokens = ("; or (tokens) the simulator serves each agent iteration by iteration, as the engine does: "
                   "decode steps by the rows' contexts, each newcomer's prefill chunks stalling them, the cores the "
                   f"agents share; {tasks}. Needs a profile with token_costs" if tokens else "")
    p.add_argument("--profile-basis", choices=("task", "step", "tokens") if tokens else ("task", "step"),
                   default="task",
                   help="price a batch row by the profile's whole-task times, prefill included (task, default "
                        "where the file has them), or by its decode steps alone (step)" + help_tokens)


def _batching(args: argparse.Namespace):
    """(max_batch, profile) from --max-batch and --batch-profile."""
    from ..engine.batch_profile import BatchProfile

    basis = "step" if args.profile_basis == "tokens" else args.profile_basis
    profile = BatchProfile.read(args.batch_profile, basis) if args.batch_profile else None
    max_batch = args.max_batch if args.max_batch is not None else (profile.best_rows(profile.rows) if profile else 1)
    if max_batch < 1:
        raise ConfigError([("--max-batch", max_batch, "must be at least 1")])
    return max_batch, profile


def _token_work(args: argparse.Namespace) -> dict:
    """SimConfig keywords of the iteration model from --profile-basis tokens, --tokens, --cores ({} without)."""
    if args.profile_basis != "tokens":
        given = [flag for flag, value in (("--tokens", args.tokens), ("--synthesis-tokens", args.synthesis_tokens),
                                          ("--cores", args.cores)) if value is not None]
        if given:  # said but not used would be silently ignored: say so
            raise ConfigError([(flag, getattr(args, flag[2:].replace("-", "_")),
                                "only with --profile-basis tokens (the iteration model)") for flag in given])
        return {}
    from ..engine.batch_profile import TokenCosts

    problems = []
    if not args.batch_profile:
        problems.append(("--profile-basis", "tokens", "needs --batch-profile FILE with token_costs"))
    if args.tokens is None:
        problems.append(("--tokens", None, "--profile-basis tokens needs a task's prompt and new tokens, P,D"))
    if problems:
        raise ConfigError(problems)
    prompt, new = args.tokens[:2]
    k = args.proposers if args.layers else 0
    later = args.synthesis_tokens or (prompt + (k + 1) * new, new)
    return {"costs": TokenCosts.read(args.batch_profile), "tokens_first": (args.tokens,), "tokens_synthesis": (later,),
            "cores": args.cores, "threads": args.threads}


def _token_capacity(args: argparse.Namespace, work: dict, max_batch: int) -> dict:
    from .iteration_server import token_capacity

    return token_capacity(work["costs"], work["tokens_first"], work["tokens_synthesis"], agents=args.agents,
                          layers=args.layers, proposers=args.proposers, max_batch=max_batch, cores=work["cores"],
                          threads=work["threads"])


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `plan`, `simulate` and `experiment` to the CLI."""
    p = subparsers.add_parser(
        "plan", help="is a configuration stable? (the paper's Theorem 1, and the speed-aware bound)",
        description="Load, utilisation, stability and the largest stable rate of a mesh configuration, per "
                    "Theorem 1 (alpha*((k+1)M+1)*lambda < 1, alpha = the slowest agent's) and, with "
                    "--policy speed-aware, the bound for load- and speed-aware peer choice.")
    _mesh_arguments(p, alpha_required=False)
    p.add_argument("--policy", choices=("uniform", "speed-aware"), default="uniform",
                   help="also give the bound for speed-aware peer choice")
    p.add_argument("--broker", type=_broker, metavar="HOST:PORT",
                   help="read the alphas the agents advertise in their status (instead of --alpha)")
    p.add_argument("--topic-root", default="moa/v1", help="topic root of the mesh read with --broker")
    _batch_arguments(p)
    p.set_defaults(func=plan_command)

    s = subparsers.add_parser(
        "simulate", help="discrete-event simulation of the mesh's queues",
        description="Poisson prompts at every user, one FCFS queue per agent, the MoA's layer-by-layer "
                    "dependencies; per-agent queue statistics and the prompt latency distribution.")
    _mesh_arguments(s, alpha_required=False)
    s.add_argument("--service", default="deterministic", metavar="deterministic|exponential|empirical:FILE",
                   help="inference time distribution; FILE holds seconds, one per line or a `seconds` CSV "
                        "column, rescaled to each agent's --alpha (or used as is without --alpha)")
    s.add_argument("--prompts", type=int, default=100_000, help="prompts across the whole mesh")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--policy", choices=POLICIES, default="uniform",
                   help="peer choice: uniform at random (the paper), least-loaded or speed-aware of d candidates")
    s.add_argument("--candidates", "-d", type=int, default=None,
                   help="d random candidates the least-loaded/speed-aware policy chooses k from "
                        "(default min(n-1, 2k))")
    s.add_argument("--warmup", type=float, default=0.1, help="fraction of the horizon left out of the statistics")
    _batch_arguments(s)
    s.set_defaults(func=simulate_command)

    e = subparsers.add_parser(
        "experiment", help="live runs on a local mesh, compared with the simulator (the paper's Table I)",
        description="Starts a local broker and n agents, drives Poisson prompts at every user for each (M, k) of "
                    "the grid, records queue lengths and latencies, and writes CSVs, a summary table and plots.")
    e.add_argument("--agents", "-n", type=int, default=4, help="number of agents n")
    e.add_argument("--grid", default=PAPER_GRID, help=f"(M,k) pairs separated by ';' (default {PAPER_GRID!r})")
    rate = e.add_mutually_exclusive_group(required=True)
    rate.add_argument("--rate", type=float, help="prompts per second at every user (lambda)")
    rate.add_argument("--load", type=_alphas, metavar="F|F1,F2,...",
                      help="lambda as fractions of each configuration's Theorem 1 bound, e.g. 0.7,1.3")
    e.add_argument("--duration", type=float, required=True, help="seconds of prompts per run")
    e.add_argument("--engine", choices=("synthetic", "onnx"), default="synthetic")
    e.add_argument("--alpha", type=_alphas, default=None, metavar="A|A1,A2,...",
                   help="synthetic: service seconds (default 0.1), or one per agent for a mesh of mixed speeds; "
                        "onnx: mean inference seconds to plan --load with (default: measured first)")
    e.add_argument("--policy", default="uniform", metavar="uniform|speed-aware|uniform,speed-aware",
                   help="the agents' peer choice (moa.peer_policy); a list runs each configuration once per policy")
    e.add_argument("--candidates", "-d", type=int, default=3, help="speed-aware: peers drawn before keeping k")
    e.add_argument("--max-batch", type=int, default=1,
                   help="the agents' engine.max_batch (default 1: one task at a time, as Theorem 1 assumes)")
    e.add_argument("--batch-profile", type=Path, default=None, metavar="FILE",
                   help="alpha(b) per decode step (tools/bench/batching.py --out): the synthetic agents' step "
                        "costs and the simulator's and planner's batching")
    _basis_argument(e, tokens=True)
    e.add_argument("--calibrate", choices=("solo", "loaded"), default="solo",
                   help="onnx without --alpha: measure alpha (one task, b = 1) on each agent in turn with the rest "
                        "idle (solo), or on every agent at once, sharing the machine's cores as under load (loaded)")
    e.add_argument("--model", default=None, help="onnx: catalogue name or model directory (default: the default)")
    e.add_argument("--prefix-cache-mb", type=int, default=None, metavar="MB",
                   help="onnx: the agents' engine.prefix_cache_mb (0 = off; default: the config's, 32)")
    e.add_argument("--models", default=None, metavar="A,B,...",
                   help="onnx: a mixed mesh, one model per agent (overrides --model and --agents); alpha is then "
                        "measured per agent, the planner and simulator get each agent's own")
    e.add_argument("--max-new-tokens", type=int, default=16)
    e.add_argument("--threads", type=int, default=1, help="onnx: inference threads per agent")
    e.add_argument("--warmup", type=float, default=None, help="seconds left out of the statistics "
                                                              "(default 10%% of --duration)")
    e.add_argument("--drain-timeout", type=float, default=None,
                   help="seconds to wait for answers after the last prompt (default 2x --duration + 60)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--sim-prompts", type=int, default=200_000, help="prompts of the simulator's long-run prediction (the replay of each live schedule is always run)")
    e.add_argument("--out", type=Path, default=Path("experiments/out"), help="where CSVs, tables and plots go")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=experiment_command)


def _fail(command: str, exc: Exception) -> int:
    print(f"edge-moa {command}: error: {exc}", file=sys.stderr)
    return 1  # the one exit-code policy of every command (errors.py): 2 is argparse's usage error


def _alphas_from_broker(args: argparse.Namespace) -> tuple[float, ...]:
    from .live import advertised_alphas  # imports the MQTT client only when asked

    host, port = args.broker
    found = advertised_alphas(host=host, port=port, topic_root=args.topic_root)
    if len(found) != args.agents:
        why = f"{len(found)} agents advertise an alpha, --agents is {args.agents}: {sorted(found)}"
        raise ConfigError([("--broker", f"{host}:{port}", why)])
    return tuple(found[d] for d in sorted(found))


def plan_command(args: argparse.Namespace) -> int:
    try:
        if args.alpha is None and args.broker is None:
            raise ConfigError([("--alpha", None, "give --alpha A (or A1,A2,...) or --broker HOST:PORT")])
        alphas = args.alpha if args.alpha is not None else _alphas_from_broker(args)
        max_batch, profile = _batching(args)
        work = _token_work(args)
        result = plan(agents=args.agents, layers=args.layers, proposers=args.proposers, rate=args.rate,
                      alphas=alphas, speed_aware=args.policy == "speed-aware", max_batch=max_batch,
                      profile=profile)
    except EdgeMoaError as exc:
        return _fail("plan", exc)
    capacity = _token_capacity(args, work, max_batch) if work else None
    if args.json:
        print(json.dumps({**result.to_json(), **({"token_capacity": capacity} if capacity else {})}))
    else:
        print(format_plan(result) + ("\n" + format_capacity(capacity, args.rate, result.max_rate) if capacity else ""))
    return 0


def format_capacity(c: dict, rate: float, theorem1: float) -> str:
    head = (f"iteration model (prefill apart, a bound: every agent saturated with full batches, {c['share']:.2g} "
            "of a core each)")
    rate_line = (f"  largest stable rate    {c['max_rate']:.4g} prompts/s per user ({c['max_rate'] / theorem1:.2f}x "
                 f"Theorem 1), {'stable' if rate < c['max_rate'] else 'NOT stable'} at {rate:g}")
    cpu = f"  CPU per prompt         {c['cpu_s_per_prompt']:.3g} s ({c['speedup']:.2f}x less than one task at a time)"
    return f"{head}\n{cpu}\n{rate_line}"


def format_plan(p: Plan) -> str:
    amax = max(p.alphas)
    mixed = len(set(p.alphas)) > 1
    lines = [
        f"n={p.agents} agents, M={p.layers} layers, k={p.proposers} proposers, lambda={p.rate:g} prompts/s per user",
        f"  inferences per prompt  (k+1)M+1 = {p.inferences_per_prompt}",
        f"  load per agent         {p.load_per_agent:.4g} tasks/s",
        f"  alpha                  {amax:g} s" + (" (slowest of " + ",".join(f"{a:g}" for a in p.alphas) + ")"
                                                 if mixed else ""),
        "uniform random peers (Theorem 1" + (", eq. 6)" if mixed else ")"),
        f"  utilisation            {p.utilization:.3f} (busiest agent)",
        f"  stable                 {'yes' if p.stable else 'NO'}, margin {100 * p.margin:.1f}%",
        f"  largest stable rate    {p.max_rate:.4g} prompts/s per user ({p.max_rate / p.rate:.2f}x this rate)",
    ]
    sa = p.speed_aware
    if sa is not None:
        binding = ("own work (M+1)*lambda" if sa.binding_cut == 1 else
                   "mesh capacity" if sa.binding_cut == p.agents else
                   f"distinct peers (cut of {sa.binding_cut} agents)")
        lines += [
            "speed-aware peers (choose by queue length and alpha)",
            f"  own work utilisation   {sa.own_utilization:.3f} (busiest agent, (M+1)*lambda*alpha_i)",
            f"  mesh utilisation       {sa.mesh_utilization:.3f} (n*((k+1)M+1)*lambda / sum(1/alpha_i))",
            f"  stable                 {'yes' if sa.stable else 'NO'}, margin {100 * sa.margin:.1f}%",
            (f"  largest stable rate    {sa.max_rate:.4g} prompts/s per user ({sa.max_rate / p.rate:.2f}x), "
             f"bound by {binding}"),
        ]
    b = p.batch
    if b is not None:
        lines += [
            (f"continuous batching, max_batch {b.max_batch} "
             f"({f'{b.profile}, by {b.profile_basis}' if b.profile else 'free batching'}; a bound: the "
             "saturated service rate)"),
            (f"  tasks per alpha        {b.speedup:.2f}x with full batches (best b = {b.best_batch}: "
             f"{b.best_speedup:.2f}x)"),
            f"  utilisation            {b.utilization:.3f} (busiest agent)",
            f"  stable                 {'yes' if b.stable else 'NO'}",
            (f"  largest stable rate    {b.max_rate:.4g} prompts/s per user ({b.max_rate / p.max_rate:.2f}x "
             "Theorem 1)"),
        ]
        if b.max_rate_speed_aware is not None:
            lines.append(f"  with speed-aware peers {b.max_rate_speed_aware:.4g} prompts/s per user "
                         f"({b.max_rate_speed_aware / p.max_rate:.2f}x Theorem 1), "
                         f"{'stable' if b.stable_speed_aware else 'NOT stable'}")
    return "\n".join(lines)


def simulate_command(args: argparse.Namespace) -> int:
    try:
        service, samples = args.service, ()
        if service.startswith("empirical:"):
            samples = read_samples(service.partition(":")[2])
            service = "empirical"
        alphas = args.alpha
        if alphas is None:
            if service != "empirical":
                raise ConfigError([("--alpha", None, "required unless --service empirical:FILE")])
            alphas = (sum(samples) / len(samples),)
        max_batch, profile = _batching(args)
        work = _token_work(args)
        cfg = SimConfig(agents=args.agents, layers=args.layers, proposers=args.proposers, rate=args.rate,
                        alphas=alphas, prompts=args.prompts, seed=args.seed, service=service, samples=samples,
                        policy=args.policy, candidates=args.candidates, warmup=args.warmup,
                        max_batch=max_batch, profile=profile, **work)
        predicted = plan(agents=cfg.agents, layers=cfg.layers, proposers=cfg.proposers, rate=cfg.rate,
                         alphas=cfg.alphas, speed_aware=cfg.policy != "uniform", max_batch=max_batch,
                         profile=profile)
    except EdgeMoaError as exc:
        return _fail("simulate", exc)
    summary = simulate(cfg).summary()
    summary["predicted"] = {
        "utilization": predicted.utilization, "stable": predicted.stable, "max_rate": predicted.max_rate,
        **({"max_rate_speed_aware": predicted.speed_aware.max_rate, "stable_speed_aware":
            predicted.speed_aware.stable} if predicted.speed_aware else {}),
        **({"batch": predicted.to_json()["batch"]} if predicted.batch else {}),
        **({"token_capacity": _token_capacity(args, work, max_batch)} if work else {}),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(format_simulation(summary))
    return 0


def format_simulation(s: dict) -> str:
    lat = s["latency"]
    pred = s["predicted"]
    # a queue growing from empty averages half its final length: growth over the window ~ 2x the mean
    span = s["window_s"][1] - s["window_s"][0]
    growing = s["queue_growth_per_s"] * span > max(1.0, 0.5 * s["mean_in_system"])
    lines = [
        (f"n={s['agents']} M={s['layers']} k={s['proposers']} lambda={s['rate']:g}/s per user, "
         f"{s['service']} service, {s['policy']} peers, {s['prompts']} prompts (seed {s['seed']}), "
         f"{s['wall_s']:.2f} s"),
        f"{'agent':>6} {'alpha':>8} {'util':>7} {'waiting':>9} {'in system':>10} {'tasks/s':>9}",
    ]
    for i, (a, st) in enumerate(zip(s["alphas"], s["per_agent"])):
        lines.append(f"{i:>6} {a:>8.4g} {st['utilization']:>7.3f} {st['mean_waiting']:>9.3f} "
                     f"{st['mean_in_system']:>10.3f} {st['task_rate']:>9.4g}")
    lines += [
        f"{'mean':>6} {'':>8} {s['mean_utilization']:>7.3f} {s['mean_waiting']:>9.3f} {s['mean_in_system']:>10.3f}",
        f"latency s: mean {lat['mean']:.4g}  p50 {lat['p50']:.4g}  p95 {lat['p95']:.4g}  p99 {lat['p99']:.4g}",
        f"queue trend {s['queue_growth_per_s']:+.3g} tasks/s per agent"
        + ("  (GROWING: unstable)" if growing else "  (flat)"),
        f"Theorem 1: utilisation {pred['utilization']:.3f}, {'stable' if pred['stable'] else 'UNSTABLE'}, "
        f"max rate {pred['max_rate']:.4g}/s"
        + (f"; speed-aware peers: {'stable' if pred['stable_speed_aware'] else 'UNSTABLE'}, max rate "
           f"{pred['max_rate_speed_aware']:.4g}/s" if "max_rate_speed_aware" in pred else ""),
    ]
    if "batch" in pred:
        b = pred["batch"]
        lines.append(f"batching (max_batch {b['max_batch']}, bound): utilisation {b['utilization']:.3f}, "
                     f"{'stable' if b['stable'] else 'UNSTABLE'}, max rate {b['max_rate']:.4g}/s"
                     + (f", speed-aware {b['max_rate_speed_aware']:.4g}/s" if b["max_rate_speed_aware"] else ""))
    if "token_capacity" in pred:
        c = pred["token_capacity"]
        lines.append(f"iteration model (bound): max rate {c['max_rate']:.4g}/s, {c['speedup']:.2f}x less CPU per "
                     f"prompt than one task at a time, {'stable' if s['rate'] < c['max_rate'] else 'UNSTABLE'}")
    return "\n".join(lines)


def experiment_command(args: argparse.Namespace) -> int:
    try:
        from .experiment import parse_grid
        from .live import ExperimentSettings, run_experiment

        grid = parse_grid(args.grid)
        alphas = tuple(args.alpha) if args.alpha and len(args.alpha) > 1 else ()
        alpha = args.alpha[0] if args.alpha and not alphas else (max(alphas) if alphas else None)
        alpha = alpha if alpha is not None or args.engine == "onnx" else 0.1
        policies = tuple(p.strip() for p in args.policy.split(","))
        problems = []
        if any(p not in ("uniform", "speed-aware") for p in policies):
            problems.append(("--policy", args.policy, "uniform, speed-aware, or both separated by a comma"))
        models = tuple(m.strip() for m in args.models.split(",") if m.strip()) if args.models else ()
        if models:
            if args.engine != "onnx":
                problems.append(("--models", args.models, "a model per agent needs --engine onnx"))
            if len(models) < 2:
                problems.append(("--models", args.models, "at least two agents"))
            args.agents = len(models)
        if alphas and (args.engine != "synthetic" or len(alphas) != args.agents):
            problems.append(("--alpha", args.alpha, f"one per agent ({args.agents}), synthetic engine only"))
        if args.profile_basis == "tokens":
            if not args.batch_profile:
                problems.append(("--profile-basis", "tokens", "needs --batch-profile FILE with token_costs"))
            else:
                from ..engine.batch_profile import TokenCosts

                TokenCosts.read(args.batch_profile)  # a profile without token costs fails now, not after the runs
        if problems:
            raise ConfigError(problems)
        for m, k in grid:
            try:
                plan(agents=args.agents, layers=m, proposers=k, rate=args.rate or 1.0, alphas=alphas or (alpha or 1.0,))
            except ConfigError as exc:  # name the grid entry, not the flags `plan` has
                raise ConfigError([("--grid" if flag in ("--layers", "--proposers") else flag,
                                    f"{m},{k}" if flag in ("--layers", "--proposers") else value, why)
                                   for flag, value, why in exc.problems]) from None
        if args.duration <= 0:
            raise ConfigError([("--duration", args.duration, "must be positive seconds")])
        settings = ExperimentSettings(
            agents=args.agents, grid=grid, rates=[args.rate] if args.rate else None,
            loads=list(args.load) if args.load else None, duration_s=args.duration, engine=args.engine,
            alpha_s=alpha, out=args.out, model=args.model, max_new_tokens=args.max_new_tokens,
            threads=args.threads, warmup_s=args.warmup, drain_timeout_s=args.drain_timeout, seed=args.seed,
            sim_prompts=args.sim_prompts, progress=not args.no_progress, alphas=alphas, policies=policies,
            candidates=args.candidates, max_batch=args.max_batch,
            batch_profile=str(args.batch_profile) if args.batch_profile else "", calibration=args.calibrate,
            profile_basis=args.profile_basis, models=models, prefix_cache_mb=args.prefix_cache_mb,
        )
        # A background run (where SIGINT is ignored) stopped with SIGTERM still stops its mesh on the way out.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        run_experiment(settings)
    except EdgeMoaError as exc:
        return _fail("experiment", exc)
    print(f"\nCSVs, summary.md and plots in {args.out}")
    return 0
