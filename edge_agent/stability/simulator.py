"""Discrete-event simulation of the MoA mesh: Poisson users, one FCFS queue per agent, layer-by-layer dependencies.

A prompt from user i runs M layers; layer l sends one task to {i} and to k distinct peers, all entering their
agents' FCFS queues when the layer starts; layer l+1 starts when every proposer of layer l has answered; the last
step is the aggregation at i. M = 0: i answers alone. Network delays are zero (they are ~1 ms, DESIGN section 6).

Since every queue is FCFS with one server and events are handled in time order, a task's start and end are known
the moment it arrives (start = max(arrival, when the agent frees up)), so the heap holds only completions and
every task costs one push and one pop. All statistics are computed afterwards with numpy from per-task arrays.

With `max_batch` B > 1 an agent serves continuously, as engine/batch.py does: up to B tasks decode together, a
task joins at once when a row is free (else it waits FCFS) and leaves when its work is done; with b in service each
row progresses at 1 / slowdown(b) of its solo speed (the batch profile, engine/batch_profile.py). Ends then depend
on later arrivals: each agent keeps its rows by the work they still need in its own "row time" (the work one row
has received since the agent started), and the heap holds one next-completion event per agent, re-issued (the old
one ignored by its version) whenever b changes. Prefill is served like decode there (a per-task work).

With token costs (`costs`, `--profile-basis tokens`) agents are served iteration by iteration instead, as the
engine really does (stability/iteration_server.py): tasks carry measured prompt and new tokens, each newcomer's
prefill chunks stall the decoding rows, a step costs more as the rows' contexts grow, and agents on one machine
share its cores.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import MoaSection
from ..engine.batch_profile import BatchProfile, TokenCosts
from ..errors import ConfigError
from .iteration_server import IterationServer
from .planner import inferences_per_prompt, per_agent_alphas, validate

PEER_CANDIDATES = MoaSection.model_fields["peer_candidates"].default

POLICIES = ("uniform", "least-loaded", "speed-aware")
SERVICES = ("deterministic", "exponential", "empirical")


@dataclass(frozen=True)
class SimConfig:
    """One simulated configuration. `alphas` holds one value (every agent) or one per agent, in seconds."""

    agents: int
    layers: int
    proposers: int
    rate: float  # prompts per second at every user
    alphas: tuple[float, ...]
    prompts: int = 100_000  # across the whole mesh
    seed: int = 0
    service: str = "deterministic"
    samples: tuple[float, ...] = ()  # empirical service times (s); rescaled to mean alpha_i per agent
    # Optional: empirical times of synthesis steps (layers >= 2 and the aggregation, whose prompts carry the previous
    # answers); `samples` then holds the first step's (layer 1, or the M = 0 answer). The mix is rescaled together.
    samples_synthesis: tuple[float, ...] = ()
    policy: str = "uniform"
    candidates: int | None = None  # d for least-loaded / speed-aware; default the agent's: max(peer_candidates, k)
    warmup: float = 0.1  # fraction of the arrival horizon left out of the statistics
    max_batch: int = 1  # rows an agent decodes together (1: the paper's FCFS, one task at a time)
    profile: BatchProfile | None = None  # slowdown(b) of a step with b rows; None: free batching (slowdown 1)
    # The iteration model (stability/iteration_server.py): tasks priced token by token, prefill apart; service
    # times and alphas then only rank peers. Tasks draw (prompt tokens, new tokens) from the measured pairs.
    costs: TokenCosts | None = None
    # (prompt, new[, cached]) tokens: `cached` of the prompt's came from the agent's prefix cache (not prefilled)
    tokens_first: tuple[tuple[int, ...], ...] = ()  # the first step's tasks (short prompts)
    tokens_synthesis: tuple[tuple[int, ...], ...] = ()  # later steps (prompts carry the answers); () = first's
    cores: float | None = None  # agents share this many cores (one machine); None: each has its own
    threads: int = 1  # per agent, with `cores`

    def __post_init__(self) -> None:
        validate(agents=self.agents, layers=self.layers, proposers=self.proposers, rate=self.rate,
                 alphas=self.alphas)
        problems: list[tuple[str, object, str]] = []
        if self.prompts < 1:
            problems.append(("--prompts", self.prompts, "must be at least 1"))
        if self.service not in SERVICES:
            problems.append(("--service", self.service, f"one of {', '.join(SERVICES)}:FILE"))
        for samples in (self.samples, self.samples_synthesis or self.samples):
            if self.service == "empirical" and (not samples or min(samples) < 0 or sum(samples) <= 0):
                problems.append(("--service", "empirical", "needs non-negative service times with a positive mean"))
                break
        if self.policy not in POLICIES:
            problems.append(("--policy", self.policy, f"one of {', '.join(POLICIES)}"))
        if self.candidates is not None and not (self.proposers <= self.candidates <= self.agents - 1):
            problems.append(("--candidates", self.candidates, f"between k={self.proposers} and n-1={self.agents - 1}"))
        if not 0 <= self.warmup < 1:
            problems.append(("--warmup", self.warmup, "a fraction in [0, 1)"))
        if self.max_batch < 1:
            problems.append(("--max-batch", self.max_batch, "must be at least 1"))
        if self.costs is not None and not self.tokens_first:
            problems.append(("--profile-basis", "tokens", "needs the tasks' measured prompt and new tokens"))
        if self.cores is not None and not self.cores > 0:
            problems.append(("--cores", self.cores, "must be positive"))
        if problems:
            raise ConfigError(problems)

    @property
    def agent_alphas(self) -> tuple[float, ...]:
        return per_agent_alphas(self.agents, tuple(float(a) for a in self.alphas))

    @property
    def d(self) -> int:
        if self.candidates is not None:
            return self.candidates
        # the agent's own rule (agent/peers.py choose_peers): max(moa.peer_candidates, k) drawn, k kept
        return min(self.agents - 1, max(PEER_CANDIDATES, self.proposers))


@dataclass(frozen=True)
class AgentStats:
    mean_waiting: float  # time-average number of tasks queued, not in service
    mean_in_system: float  # time-average number of tasks queued or in service
    utilization: float  # fraction of time busy
    task_rate: float  # tasks per second arriving


@dataclass
class SimRun:
    """The raw outcome of one simulation: per-task and per-prompt arrays, plus the measurement window."""

    config: SimConfig
    task_agent: np.ndarray
    task_arrival: np.ndarray
    task_start: np.ndarray
    task_end: np.ndarray
    prompt_user: np.ndarray
    prompt_arrival: np.ndarray
    prompt_done: np.ndarray
    window: tuple[float, float]
    wall_s: float
    _sorted: dict = field(default_factory=dict, repr=False)
    busy_s: np.ndarray | None = None  # batched runs: per agent, seconds inside the window with a task in service

    def agent_stats(self) -> list[AgentStats]:
        t0, t1 = self.window
        span = t1 - t0
        n = self.config.agents

        def integral(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
            width = np.clip(np.minimum(hi, t1) - np.maximum(lo, t0), 0.0, None)
            return np.bincount(self.task_agent, weights=width, minlength=n) / span

        in_system = integral(self.task_arrival, self.task_end)
        waiting = integral(self.task_arrival, self.task_start)
        # with batching, tasks in service overlap: the time an agent is busy is counted by the run itself
        busy = integral(self.task_start, self.task_end) if self.busy_s is None else self.busy_s / span
        inside = (self.task_arrival >= t0) & (self.task_arrival < t1)
        rate = np.bincount(self.task_agent[inside], minlength=n) / span
        return [AgentStats(float(w), float(s), float(b), float(r))
                for w, s, b, r in zip(waiting, in_system, busy, rate)]

    def latencies(self) -> np.ndarray:
        t0, t1 = self.window
        inside = (self.prompt_arrival >= t0) & (self.prompt_arrival <= t1)
        return (self.prompt_done - self.prompt_arrival)[inside]

    def queue_trace(self, times: np.ndarray, *, waiting: bool = False) -> np.ndarray:
        """Number of tasks in system (or waiting) at each agent at the given times: shape (agents, len(times))."""
        key = "start" if waiting else "end"
        if key not in self._sorted:
            leave = self.task_start if waiting else self.task_end
            # one sort by (agent, time) instead of one scan of every task per agent (10,000 agents: 17 s -> 0.5 s)
            bounds = np.searchsorted(self.task_agent[np.argsort(self.task_agent, kind="stable")],
                                     np.arange(self.config.agents + 1))
            arrive = self.task_arrival[np.lexsort((self.task_arrival, self.task_agent))]
            depart = leave[np.lexsort((leave, self.task_agent))]
            self._sorted[key] = (bounds, arrive, depart)
        bounds, arrive, depart = self._sorted[key]
        return np.array([np.searchsorted(arrive[lo:hi], times, side="right")
                         - np.searchsorted(depart[lo:hi], times, side="right")
                         for lo, hi in itertools.pairwise(bounds)])

    def growth_per_s(self, points: int = 200) -> float:
        """Least-squares slope of the mean (over agents) number in system across the window: ~0 when stable."""
        t0, t1 = self.window
        times = np.linspace(t0, t1, points)
        y = self.queue_trace(times).mean(axis=0)
        return float(np.polyfit(times, y, 1)[0])

    def summary(self) -> dict:
        """The JSON object `edge-moa simulate --json` prints."""
        cfg = self.config
        stats = self.agent_stats()
        lat = self.latencies()
        pct = np.percentile(lat, [50, 95, 99]) if lat.size else [float("nan")] * 3
        utils = [s.utilization for s in stats]
        return {
            "agents": cfg.agents, "layers": cfg.layers, "proposers": cfg.proposers, "rate": cfg.rate,
            "alphas": list(cfg.agent_alphas), "service": cfg.service, "policy": cfg.policy,
            "max_batch": cfg.max_batch,
            "batch_profile": cfg.costs.decode.source if cfg.costs else cfg.profile.source if cfg.profile else None,
            "profile_basis": "tokens" if cfg.costs else cfg.profile.basis if cfg.profile else None,
            "cores": cfg.cores,
            "candidates": cfg.d if cfg.policy != "uniform" else None,
            "prompts": int(self.prompt_arrival.size), "seed": cfg.seed,
            "inferences_per_prompt": inferences_per_prompt(cfg.layers, cfg.proposers),
            "mean_waiting": float(np.mean([s.mean_waiting for s in stats])),
            "mean_in_system": float(np.mean([s.mean_in_system for s in stats])),
            "utilization": float(max(utils)),
            "mean_utilization": float(np.mean(utils)),
            "latency": {"mean": float(lat.mean()) if lat.size else float("nan"),
                        "p50": float(pct[0]), "p95": float(pct[1]), "p99": float(pct[2])},
            "queue_growth_per_s": self.growth_per_s(),
            "window_s": [self.window[0], self.window[1]],
            "measured_prompts": int(lat.size),
            "per_agent": [s.__dict__ for s in stats],
            "wall_s": self.wall_s,
        }


def read_samples(path: str | Path) -> tuple[float, ...]:
    """Service times in seconds: one number per line ('#' comments), or a CSV whose header has `seconds`."""
    try:
        lines = [ln.strip() for ln in Path(path).read_text().splitlines()]
    except OSError as exc:
        raise ConfigError([("--service", f"empirical:{path}", f"cannot read: {exc.strerror}")]) from exc
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    column = None
    if lines and "," in lines[0]:
        header = [h.strip() for h in lines[0].split(",")]
        if "seconds" not in header:
            raise ConfigError([("--service", f"empirical:{path}", "CSV needs a `seconds` column")])
        column, lines = header.index("seconds"), lines[1:]
    try:
        values = tuple(float(ln.split(",")[column] if column is not None else ln) for ln in lines)
    except (ValueError, IndexError) as exc:
        raise ConfigError([("--service", f"empirical:{path}", f"not a number: {exc}")]) from exc
    if not values:
        raise ConfigError([("--service", f"empirical:{path}", "holds no service times")])
    return values


_PERMUTATION_LIMIT = 20_000_000  # random numbers drawn at once for whole permutations


def distinct_draws(rng: np.random.Generator, shape: tuple[int, ...], width: int, population: int) -> np.ndarray:
    """`width` distinct integers in [0, population) for every index of `shape`, uniformly (each row a uniform
    random subset in random order). Small meshes take the first `width` of a random permutation; large ones
    draw with replacement and redraw the few rows with a repeat (the permutation would need rows * population
    numbers: 10,000 agents and 1,000,000 prompts would be 80 GB)."""
    rows = int(np.prod(shape))
    if rows * population <= _PERMUTATION_LIMIT or width * 4 > population:
        return np.argsort(rng.random((*shape, population)), axis=-1)[..., :width]
    draws = rng.integers(0, population, size=(rows, width))
    while True:
        ordered = np.sort(draws, axis=1)
        repeated = np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1))
        if not repeated.size:
            return draws.reshape(*shape, width)
        draws[repeated] = rng.integers(0, population, size=(repeated.size, width))


def simulate(cfg: SimConfig, *, arrivals: np.ndarray | None = None, users: np.ndarray | None = None,
             window: tuple[float, float] | None = None) -> SimRun:
    """Run one configuration to completion (every prompt answered) and return the raw arrays.

    `arrivals` (sorted seconds) and `users` (agent indices) replay a given prompt schedule instead of drawing
    one (`cfg.prompts` and `cfg.rate` are then not used for arrivals); `window` overrides the measurement window.
    """
    started = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    n, m, k = cfg.agents, cfg.layers, cfg.proposers if cfg.layers > 0 else 0
    alphas = cfg.agent_alphas
    ipp = inferences_per_prompt(m, k)

    if arrivals is None:
        # Independent Poisson users at equal rates = one Poisson stream of rate n*lambda, each user uniform.
        arrivals = np.cumsum(rng.exponential(1.0 / (n * cfg.rate), size=cfg.prompts))
        users = rng.integers(0, n, size=cfg.prompts)
    else:
        arrivals, users = np.asarray(arrivals, dtype=float), np.asarray(users, dtype=np.int64)
        if arrivals.size == 0 or arrivals.shape != users.shape or np.any(np.diff(arrivals) < 0):
            raise ValueError("arrivals must be sorted, non-empty and as long as users")
    total = int(arrivals.size)

    # Unit-mean service times, consumed in task-creation order and scaled by the serving agent's alpha.
    tasks = total * ipp
    if cfg.service == "deterministic":
        unit = np.ones(tasks)
    elif cfg.service == "exponential":
        unit = rng.exponential(1.0, size=tasks)
    else:
        first = np.asarray(cfg.samples, dtype=float)
        syn = np.asarray(cfg.samples_synthesis or cfg.samples, dtype=float)
        first_share = (k + 1) / ipp if m > 0 else 1.0  # of the tasks, under any policy
        ref = first_share * first.mean() + (1 - first_share) * syn.mean()
        unit = rng.choice(first / ref, size=tasks)
        if cfg.samples_synthesis:
            unit_syn = rng.choice(syn / ref, size=tasks).tolist()

    # Peer draws for every (prompt, layer): a random order of the n-1 others, as indices into "everyone but u".
    width = k if cfg.policy == "uniform" else cfg.d
    if m > 0 and width > 0:
        order = distinct_draws(rng, (total, m), width, n - 1)
        peers = order + (order >= users[:, None, None])  # skip the origin
        peer_lists = peers.tolist()
    else:
        peer_lists = None

    users_l, arrivals_l, unit_l = users.tolist(), arrivals.tolist(), unit.tolist()
    syn_l = unit_syn if cfg.service == "empirical" and cfg.samples_synthesis else unit_l
    t_agent = [0] * tasks
    t_arr = [0.0] * tasks
    t_start = [0.0] * tasks
    t_end = [0.0] * tasks
    task_prompt = [0] * tasks
    done = [0.0] * total
    layer = [0] * total
    remaining = [0] * total
    free = [0.0] * n
    in_system = [0] * n
    heap: list = []
    push, pop = heapq.heappush, heapq.heappop
    policy = cfg.policy
    alpha_l = list(alphas)
    tid = 0

    def choose(p: int, lay: int) -> list[int]:
        cands = peer_lists[p][lay - 1]
        if policy == "uniform":
            return cands
        if policy == "least-loaded":
            return sorted(cands, key=in_system.__getitem__)[:k]
        return sorted(cands, key=lambda a: (in_system[a] + 1) * alpha_l[a])[:k]

    def start_step(p: int, t: float) -> None:
        """Send prompt p's next step (a layer, or the aggregation) to its agents' queues at time t."""
        nonlocal tid
        u = users_l[p]
        lay = layer[p] + 1
        layer[p] = lay
        if lay <= m:
            targets = [u] + choose(p, lay) if k else [u]
        else:
            targets = [u]
        remaining[p] = len(targets)
        service = unit_l if lay == 1 else syn_l
        last = t
        for a in targets:
            in_system[a] += 1
            t_agent[tid], t_arr[tid], task_prompt[tid] = a, t, p
            if server is not None:
                work = (first_l if lay == 1 else syn_tokens)[tid]
                server.admit(a, tid, work[0], work[1], t, work[2] if len(work) > 2 else 0)
            elif batched:
                admit(a, tid, service[tid] * alpha_l[a], t)
            else:
                f = free[a]
                st = f if f > t else t  # noqa: FURB136 -- the hot loop; max() costs a call
                end = st + service[tid] * alpha_l[a]
                free[a] = end
                t_start[tid], t_end[tid] = st, end
                if step_events:
                    last = end if end > last else last  # noqa: FURB136
                else:
                    push(heap, (end, tid, p, a))
            tid += 1
        if step_events:  # uniform peers read no queue: one event when the whole step is done
            remaining[p] = 1
            push(heap, (last, tid, p, -1))

    # -- continuous batching (max_batch > 1): per agent, rows by the row time at which they finish --
    batched = cfg.max_batch > 1 or cfg.costs is not None
    step_events = not batched and policy == "uniform"
    rows_cap = cfg.max_batch
    slow = [1.0] + [cfg.profile.slowdown(b) if cfg.profile else 1.0 for b in range(1, rows_cap + 1)]
    row_time = [0.0] * n  # work each row of agent a has received
    stamp = [0.0] * n  # when row_time[a] was last brought up to date
    rows: list[list] = [[] for _ in range(n)]  # heaps of (row time at which the task ends, tid)
    waiting_q: list[deque] = [deque() for _ in range(n)]
    version = [0] * n
    busy_since = [0.0] * n
    busy_s = [0.0] * n
    t0_w, t1_w = (window if window else (cfg.warmup * float(arrivals[-1]), float(arrivals[-1])))

    due = [0.0] * n  # when the agent's pending event fires (inf: none)
    server = None
    if cfg.costs is not None:
        server = IterationServer(n, cfg.costs, rows_cap, heap, t_start, t_end, cores=cfg.cores,
                                 threads=cfg.threads, window=(t0_w, t1_w))
        busy_s = server.busy_s
        pairs_first = cfg.tokens_first
        pairs_syn = cfg.tokens_synthesis or pairs_first
        first_l = [pairs_first[j] for j in rng.integers(0, len(pairs_first), size=tasks)]
        syn_tokens = [pairs_syn[j] for j in rng.integers(0, len(pairs_syn), size=tasks)]

    def admit(a: int, task: int, work: float, t: float) -> None:
        mine = rows[a]
        b = len(mine)
        if b >= rows_cap:
            waiting_q[a].append((task, work))
            return
        if b:
            row_time[a] += (t - stamp[a]) / slow[b]
        else:
            busy_since[a] = t
        stamp[a] = t
        t_start[task] = t
        push(mine, (row_time[a] + work, task))
        end = t + (mine[0][0] - row_time[a]) * slow[b + 1]
        # one more row only delays the others: a pending event that fires earlier stays (it re-checks then)
        if b == 0 or end < due[a]:
            version[a] += 1
            due[a] = end
            push(heap, (end, -1, version[a], a))

    def finish(a: int, t: float) -> int:
        """The agent's event at t: its first row leaves if its work is done (else the event was early: re-issued);
        -1 when no row left."""
        mine = rows[a]
        row_time[a] += (t - stamp[a]) / slow[len(mine)]
        stamp[a] = t
        task = -1
        if (mine[0][0] - row_time[a]) * slow[len(mine)] <= 1e-9 * (1.0 + t):  # done, to within float error
            _, task = pop(mine)
            t_end[task] = t
            if waiting_q[a]:
                nxt, work = waiting_q[a].popleft()
                t_start[nxt] = t
                push(mine, (row_time[a] + work, nxt))
            elif not mine:
                lo, hi = max(busy_since[a], t0_w), min(t, t1_w)
                if hi > lo:
                    busy_s[a] += hi - lo
        version[a] += 1
        if mine:
            due[a] = t + (mine[0][0] - row_time[a]) * slow[len(mine)]
            push(heap, (due[a], -1, version[a], a))
        return task

    i = 0
    while i < total or heap:
        if i < total and (not heap or arrivals_l[i] <= heap[0][0]):
            start_step(i, arrivals_l[i])
            i += 1
            continue
        if batched:
            end, _, ver, a = pop(heap)
            if server is not None:
                task = server.fire(a, end, ver)
            elif ver != version[a]:
                continue  # superseded: the agent's batch changed since
            else:
                task = finish(a, end)
            if task < 0:
                continue  # fired early (rows joined since it was set): re-issued for the right time
            p = task_prompt[task]
        else:
            end, _, p, a = pop(heap)
        if a >= 0:
            in_system[a] -= 1
        remaining[p] -= 1
        if remaining[p] == 0:
            if layer[p] <= m:
                start_step(p, end)
            else:
                done[p] = end

    horizon = float(arrivals[-1])
    return SimRun(
        config=cfg,
        task_agent=np.asarray(t_agent[:tid], dtype=np.int64),
        task_arrival=np.asarray(t_arr[:tid]),
        task_start=np.asarray(t_start[:tid]),
        task_end=np.asarray(t_end[:tid]),
        prompt_user=users,
        prompt_arrival=arrivals,
        prompt_done=np.asarray(done),
        window=window or (cfg.warmup * horizon, horizon),
        wall_s=time.perf_counter() - started,
        busy_s=np.asarray(busy_s) if batched else None,
    )
