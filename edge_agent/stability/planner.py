"""Stability of a mesh configuration: the paper's Theorem 1 (eq. 5-6) and the bound for speed-aware peer choice.

Pure functions, no I/O. Notation as in the paper: n agents, M layers, k extra proposers per layer, lambda prompts
per second at every user, alpha_i the mean inference time of agent i. docs/stability.md derives every formula.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from ..agent.moa import inferences_per_prompt  # the one formula: the planner prices what the agent runs
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..engine.batch_profile import BatchProfile


def validate(*, agents: int, layers: int, proposers: int, rate: float, alphas: tuple[float, ...]) -> None:
    """Raise ConfigError listing every bad argument (flag name, value, why)."""
    problems: list[tuple[str, object, str]] = []
    if agents < 1:
        problems.append(("--agents", agents, "must be at least 1"))
    if layers < 0:
        problems.append(("--layers", layers, "must be at least 0"))
    if proposers < 0:
        problems.append(("--proposers", proposers, "must be at least 0"))
    elif agents >= 1 and layers > 0 and proposers > agents - 1:
        problems.append(("--proposers", proposers, f"at most agents-1 = {agents - 1} distinct peers exist"))
    if not rate > 0:
        problems.append(("--rate", rate, "must be a positive number of prompts per second per user"))
    if len(alphas) not in (1, agents):
        problems.append(("--alpha", ",".join(map(str, alphas)), f"give one value or one per agent ({agents})"))
    if any(not a > 0 for a in alphas):
        problems.append(("--alpha", ",".join(map(str, alphas)), "mean inference times must be positive seconds"))
    if problems:
        raise ConfigError(problems)


def per_agent_alphas(agents: int, alphas: tuple[float, ...]) -> tuple[float, ...]:
    return alphas * agents if len(alphas) == 1 else alphas


def uniform_max_rate(layers: int, proposers: int, alphas: tuple[float, ...]) -> float:
    """Largest stable lambda per user with uniform random peers: eq. (6), 1 / (alpha_max * ((k+1)M+1))."""
    return 1.0 / (max(alphas) * inferences_per_prompt(layers, proposers))


def speed_aware_max_rate(agents: int, layers: int, proposers: int, alphas: tuple[float, ...]) -> tuple[float, int]:
    """Largest lambda per user for which SOME choice of peers keeps every queue stable, and the binding cut size.

    Each user j must place k*M*lambda peer tasks per second on agents other than j, at most M*lambda on any one
    (the k peers of a layer are distinct), while agent i has c_i = 1/alpha_i - (M+1)*lambda tasks/s left after
    its own user's proposals and aggregation. This transport problem is feasible iff its min cut covers the
    demand; by symmetry a cut is fixed by its size a (the a agents with the least capacity), giving

        lambda < H_a / B_a for a = 1..n,  H_a = sum of the a smallest 1/alpha_i,
        B_a = a*(M+1) + n*k*M - a*M*min(k, n-a) - (n-a)*M*min(k, n-a-1).

    a = 1 with k < n-1 is "each agent carries its own (M+1)*lambda"; a = n is "the mesh has capacity
    n*((k+1)M+1)*lambda < sum(1/alpha_i)"; the cuts between bind when the distinct-peer cap does (k near n-1).
    """
    n, m, k = agents, layers, proposers if layers > 0 else 0
    rates = sorted(1.0 / a for a in alphas)
    best, binding = float("inf"), n
    h = 0.0
    for a in range(1, n + 1):
        h += rates[a - 1]
        b = a * (m + 1) + n * k * m - a * m * min(k, n - a) - (n - a) * m * min(k, max(n - a - 1, 0))
        if b > 0 and h / b < best:
            best, binding = h / b, a
    return best, binding


@dataclass(frozen=True)
class SpeedAwarePlan:
    """The bound for speed-aware peer choice, beside the paper's."""

    max_rate: float  # exact (min cut) bound, lambda per user
    max_rate_own: float  # each agent carries its own (M+1)*lambda
    max_rate_mesh: float  # n*((k+1)M+1)*lambda < sum(1/alpha_i)
    binding_cut: int  # size of the binding cut: 1 = own load (or no choice), n = mesh capacity
    own_utilization: float  # busiest agent's utilisation from its own user's work alone
    mesh_utilization: float  # total work / total capacity
    stable: bool
    margin: float  # 1 - rate / max_rate


@dataclass(frozen=True)
class BatchPlan:
    """The same bounds with continuous batching: agent i serves up to `b/(alpha_i slowdown(b))` tasks per second
    with b rows, and a saturated agent runs full batches of `max_batch`, so its capacity is
    `max_batch / (alpha_i * slowdown(max_batch))`. These are bounds (the saturated service rate), exact for the
    stability of the birth-death chain (exponential work, closed_form.batched_in_system) and necessary for any
    work-conserving server: below them the queues are bounded, above they grow."""

    max_batch: int
    speedup: float  # max_batch / slowdown(max_batch): tasks per alpha(1) with full batches
    best_batch: int  # the measured b with the highest speedup
    best_speedup: float
    max_rate: float  # uniform peers: 1 / (max_i alpha_i slowdown(B) / B * ((k+1)M+1))
    utilization: float  # busiest agent: load * alpha_i * slowdown(B) / B
    stable: bool
    max_rate_speed_aware: float | None = None  # the min-cut bound on the batched capacities
    stable_speed_aware: bool | None = None
    profile: str = ""
    profile_basis: str = "step"  # whole tasks (prefill priced) or decode steps alone


def batched_alphas(alphas: tuple[float, ...], profile: BatchProfile, max_batch: int) -> tuple[float, ...]:
    """Each agent's seconds per task when it runs full batches: alpha_i * slowdown(B) / B."""
    return tuple(a / profile.speedup(max_batch) for a in alphas)


def batch_plan(*, agents: int, layers: int, proposers: int, rate: float, alphas: tuple[float, ...],
               profile: BatchProfile, max_batch: int, speed_aware: bool = False) -> BatchPlan:
    alphas = per_agent_alphas(agents, tuple(float(a) for a in alphas))
    effective = batched_alphas(alphas, profile, max_batch)
    ipp = inferences_per_prompt(layers, proposers)
    max_rate = uniform_max_rate(layers, proposers, effective)
    util = ipp * rate * max(effective)
    best = profile.best_rows(profile.rows)  # over the measured rows only
    sa_rate = speed_aware_max_rate(agents, layers, proposers, effective)[0] if speed_aware else None
    return BatchPlan(
        max_batch=max_batch, speedup=profile.speedup(max_batch), best_batch=best, best_speedup=profile.speedup(best),
        max_rate=max_rate, utilization=util, stable=util < 1.0,
        max_rate_speed_aware=sa_rate, stable_speed_aware=(rate < sa_rate) if sa_rate is not None else None,
        profile=profile.source, profile_basis=profile.basis,
    )


@dataclass(frozen=True)
class Plan:
    agents: int
    layers: int
    proposers: int
    rate: float
    alphas: tuple[float, ...]  # one per agent
    inferences_per_prompt: int
    load_per_agent: float  # inference tasks per second arriving at every agent (uniform peers)
    utilizations: tuple[float, ...]  # per agent, load * alpha_i
    utilization: float  # the busiest agent's
    stable: bool  # Theorem 1 / eq. (6)
    max_rate: float  # largest stable lambda per user (uniform peers)
    margin: float  # 1 - utilization: the busiest agent's headroom
    speed_aware: SpeedAwarePlan | None = None
    batch: BatchPlan | None = None  # with --max-batch B > 1 and a batch profile

    def to_json(self) -> dict:
        out = asdict(self)
        out["alphas"] = list(self.alphas)
        out["utilizations"] = list(self.utilizations)
        out["alpha_max"] = max(self.alphas)
        out["policy"] = "speed-aware" if self.speed_aware else "uniform"
        sa = out.pop("speed_aware")
        if sa is not None:
            out["speed_aware"] = sa
            out["max_rate_speed_aware"] = sa["max_rate"]
            out["stable_speed_aware"] = sa["stable"]
        if out["batch"] is None:
            out.pop("batch")
        return out


def plan(
    *, agents: int, layers: int, proposers: int, rate: float, alphas: tuple[float, ...], speed_aware: bool = False,
    max_batch: int = 1, profile: BatchProfile | None = None,
) -> Plan:
    """Theorem 1 for one configuration; with `speed_aware`, also the bound for load- and speed-aware peers; with
    `max_batch` > 1 and a batch profile, both again for continuous batching (BatchPlan)."""
    validate(agents=agents, layers=layers, proposers=proposers, rate=rate, alphas=alphas)
    alphas = per_agent_alphas(agents, tuple(float(a) for a in alphas))
    ipp = inferences_per_prompt(layers, proposers)
    # By symmetry each agent gets (M+1)*lambda of its own work and k*M*lambda/(n-1) from each of n-1 others.
    load = ipp * rate
    utils = tuple(load * a for a in alphas)
    util = max(utils)
    max_rate = uniform_max_rate(layers, proposers, alphas)
    sa = None
    if speed_aware:
        sa_rate, cut = speed_aware_max_rate(agents, layers, proposers, alphas)
        own = 1.0 / ((layers + 1) * max(alphas))
        capacity = sum(1.0 / a for a in alphas)
        mesh = capacity / (agents * ipp)
        sa = SpeedAwarePlan(
            max_rate=sa_rate, max_rate_own=own, max_rate_mesh=mesh, binding_cut=cut,
            own_utilization=rate / own, mesh_utilization=rate / mesh,
            stable=rate < sa_rate, margin=1.0 - rate / sa_rate,
        )
    batch = None
    if max_batch > 1:
        from ..engine.batch_profile import BatchProfile

        batch = batch_plan(agents=agents, layers=layers, proposers=proposers, rate=rate, alphas=alphas,
                           profile=profile or BatchProfile.linear(0.0, max_batch), max_batch=max_batch,
                           speed_aware=speed_aware)
    return Plan(
        agents=agents, layers=layers, proposers=proposers, rate=rate, alphas=alphas,
        inferences_per_prompt=ipp, load_per_agent=load, utilizations=utils, utilization=util,
        stable=util < 1.0, max_rate=max_rate, margin=1.0 - util, speed_aware=sa, batch=batch,
    )
