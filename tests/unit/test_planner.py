"""Theorem 1, its heterogeneous form (eq. 6) and the speed-aware bound, checked without I/O."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.errors import ConfigError
from edge_agent.stability.planner import inferences_per_prompt, plan, speed_aware_max_rate

PAPER_GRID = [(0, 0, 1), (1, 1, 3), (1, 2, 4), (2, 1, 5), (2, 2, 7), (1, 3, 5), (2, 3, 9)]


@pytest.mark.parametrize("layers,proposers,expected", PAPER_GRID)
def test_inferences_per_prompt_on_the_papers_grid(layers, proposers, expected):
    assert inferences_per_prompt(layers, proposers) == expected


@pytest.mark.parametrize("layers,proposers,expected", PAPER_GRID)
def test_theorem_1_homogeneous(layers, proposers, expected):
    p = plan(agents=4, layers=layers, proposers=proposers, rate=0.25, alphas=(0.5,))
    assert p.load_per_agent == pytest.approx(expected * 0.25)
    assert p.utilization == pytest.approx(0.5 * expected * 0.25)
    assert p.stable is (0.5 * expected * 0.25 < 1)
    assert p.max_rate == pytest.approx(1 / (0.5 * expected))
    assert p.margin == pytest.approx(1 - p.utilization)


def test_stability_flips_exactly_at_the_bound():
    bound = plan(agents=4, layers=1, proposers=2, rate=1.0, alphas=(2.0,)).max_rate
    assert bound == pytest.approx(1 / 8)
    assert plan(agents=4, layers=1, proposers=2, rate=bound * 0.999, alphas=(2.0,)).stable
    assert not plan(agents=4, layers=1, proposers=2, rate=bound * 1.001, alphas=(2.0,)).stable


def test_heterogeneous_uses_the_slowest_agent():
    # eq. (6): ((k+1)M+1) lambda < 1 / alpha_max
    p = plan(agents=4, layers=1, proposers=2, rate=0.1, alphas=(1.0, 1.0, 1.5, 3.0))
    assert p.utilizations == pytest.approx((0.4, 0.4, 0.6, 1.2))
    assert p.utilization == pytest.approx(1.2)
    assert not p.stable
    assert p.max_rate == pytest.approx(1 / (4 * 3.0))


def test_one_alpha_is_broadcast_to_every_agent():
    assert plan(agents=3, layers=1, proposers=1, rate=0.1, alphas=(2.0,)).alphas == (2.0, 2.0, 2.0)


def test_speed_aware_equals_the_paper_when_all_alphas_are_equal():
    for layers, proposers, _ in PAPER_GRID:
        p = plan(agents=4, layers=layers, proposers=proposers, rate=0.1, alphas=(0.7,), speed_aware=True)
        assert p.speed_aware.max_rate == pytest.approx(p.max_rate)


def test_speed_aware_with_mixed_models():
    # alphas (1,1,1,2), M=1: own load of the slow agent, 2*lambda*2 < 1, binds for k = 1; the mesh
    # capacity 3.5 / (4 * 4) binds for k = 2; k = 3 = n-1 leaves no choice, so the paper's bound holds.
    alphas = (1.0, 1.0, 1.0, 2.0)
    assert speed_aware_max_rate(4, 1, 1, alphas) == (pytest.approx(0.25), 1)
    assert speed_aware_max_rate(4, 1, 2, alphas) == (pytest.approx(3.5 / 16), 4)
    assert speed_aware_max_rate(4, 1, 3, alphas)[0] == pytest.approx(1 / (5 * 2.0))
    p = plan(agents=4, layers=1, proposers=2, rate=0.2, alphas=alphas, speed_aware=True)
    assert not p.stable and p.speed_aware.stable
    assert p.speed_aware.max_rate_own == pytest.approx(0.25)
    assert p.speed_aware.max_rate_mesh == pytest.approx(3.5 / 16)


def test_json_has_the_keys_scripts_read():
    out = plan(agents=4, layers=1, proposers=2, rate=0.1, alphas=(1.0, 2.0, 1.0, 1.0), speed_aware=True).to_json()
    for key in ("inferences_per_prompt", "utilization", "stable", "max_rate", "max_rate_speed_aware", "margin"):
        assert key in out
    assert isinstance(out["stable"], bool)
    assert "max_rate_speed_aware" not in plan(agents=4, layers=1, proposers=2, rate=0.1, alphas=(1.0,)).to_json()


@pytest.mark.parametrize(
    "kwargs,flag",
    [
        ({"agents": 4, "layers": 1, "proposers": 4, "rate": 0.1, "alphas": (1.0,)}, "--proposers"),
        ({"agents": 4, "layers": 1, "proposers": 2, "rate": 0.0, "alphas": (1.0,)}, "--rate"),
        ({"agents": 4, "layers": 1, "proposers": 2, "rate": 0.1, "alphas": (1.0, 2.0)}, "--alpha"),
        ({"agents": 4, "layers": 1, "proposers": 2, "rate": 0.1, "alphas": (-1.0,)}, "--alpha"),
        ({"agents": 0, "layers": 1, "proposers": 0, "rate": 0.1, "alphas": (1.0,)}, "--agents"),
        ({"agents": 4, "layers": -1, "proposers": 0, "rate": 0.1, "alphas": (1.0,)}, "--layers"),
    ],
)
def test_bad_arguments_name_the_flag(kwargs, flag):
    with pytest.raises(ConfigError) as info:
        plan(**kwargs)
    assert [p[0] for p in info.value.problems] == [flag]


# -- the min-cut formula against a brute-force max flow on the transport network --

def _max_flow(capacity: list[list[float]], source: int, sink: int) -> float:
    n = len(capacity)
    residual = [row[:] for row in capacity]
    flow = 0.0
    while True:
        parent = [-1] * n
        parent[source] = source
        queue = deque([source])
        while queue and parent[sink] < 0:
            u = queue.popleft()
            for v in range(n):
                if parent[v] < 0 and residual[u][v] > 1e-12:
                    parent[v] = u
                    queue.append(v)
        if parent[sink] < 0:
            return flow
        v, push = sink, float("inf")
        while v != source:
            push = min(push, residual[parent[v]][v])
            v = parent[v]
        v = sink
        while v != source:
            residual[parent[v]][v] -= push
            residual[v][parent[v]] += push
            v = parent[v]
        flow += push


def _feasible(agents: int, layers: int, proposers: int, rate: float, alphas: list[float]) -> bool:
    """Can peer tasks be placed so every agent's load is below its capacity? (source, users, agents, sink)"""
    n, m, k = agents, layers, proposers
    spare = [1 / a - (m + 1) * rate for a in alphas]
    if min(spare) <= 0:
        return False
    size = 2 * n + 2
    cap = [[0.0] * size for _ in range(size)]
    for j in range(n):
        cap[0][1 + j] = k * m * rate
        for i in range(n):
            if i != j:
                cap[1 + j][1 + n + i] = m * rate
        cap[1 + n + j][size - 1] = spare[j]
    return _max_flow(cap, 0, size - 1) >= n * k * m * rate * (1 - 1e-9)


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(2, 6),
    m=st.integers(0, 3),
    data=st.data(),
)
def test_speed_aware_bound_is_the_max_flow_threshold(n, m, data):
    k = data.draw(st.integers(0, n - 1))
    alphas = data.draw(st.lists(st.floats(0.2, 5.0), min_size=n, max_size=n))
    bound, _ = speed_aware_max_rate(n, m, k, tuple(alphas))
    assert _feasible(n, m, k, bound * 0.995, alphas)
    assert not _feasible(n, m, k, bound * 1.005, alphas)
    # never below the paper's bound, never above either of the two simple conditions
    p = plan(agents=n, layers=m, proposers=k, rate=bound, alphas=tuple(alphas), speed_aware=True)
    assert p.max_rate <= bound * (1 + 1e-9)
    assert bound <= min(p.speed_aware.max_rate_own, p.speed_aware.max_rate_mesh) * (1 + 1e-9)


def test_batching_scales_both_bounds_by_the_full_batch_speedup(tmp_path, capsys):
    import json

    from edge_agent.cli import main
    from edge_agent.engine.batch_profile import BatchProfile
    from edge_agent.stability.planner import plan, speed_aware_max_rate, uniform_max_rate

    profile = BatchProfile((0.02, 0.025, 0.03, 0.036), "test")  # 4 rows: 4 / 1.8 = 2.22x the tasks per second
    alphas = (1.0, 1.0, 2.0, 1.0)
    p = plan(agents=4, layers=1, proposers=2, rate=0.1, alphas=alphas, speed_aware=True, max_batch=4,
             profile=profile)
    speedup = 4 / 1.8
    assert p.batch.speedup == pytest.approx(speedup) and p.batch.best_batch == 4
    assert p.batch.max_rate == pytest.approx(uniform_max_rate(1, 2, alphas) * speedup)
    assert p.batch.max_rate == pytest.approx(speedup / (2.0 * 4))  # 1 / (alpha_max slowdown(B)/B (k+1)M+1)
    sa = speed_aware_max_rate(4, 1, 2, tuple(a / speedup for a in alphas))[0]
    assert p.batch.max_rate_speed_aware == pytest.approx(sa)
    assert p.batch.utilization == pytest.approx(4 * 0.1 * 2.0 / speedup)
    assert plan(agents=4, layers=1, proposers=2, rate=0.1, alphas=alphas).batch is None  # max_batch 1: Theorem 1

    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"step_s": {"1": 0.02, "2": 0.025, "3": 0.03, "4": 0.036}}))
    assert main(["plan", "-n", "4", "-M", "1", "-k", "2", "--rate", "0.1", "--alpha", "1,1,2,1",
                 "--batch-profile", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["batch"]["max_batch"] == 4  # the profile's best when --max-batch is not given
    assert out["batch"]["max_rate"] == pytest.approx(p.batch.max_rate)
    assert main(["plan", "-n", "4", "-M", "1", "-k", "2", "--rate", "0.1", "--alpha", "1",
                 "--max-batch", "2", "--batch-profile", str(path)]) == 0
    assert "continuous batching, max_batch 2" in capsys.readouterr().out


def test_the_simulator_stays_bounded_below_the_batched_bound_and_grows_above():
    from edge_agent.engine.batch_profile import BatchProfile
    from edge_agent.stability.planner import plan
    from edge_agent.stability.simulator import SimConfig, simulate

    profile = BatchProfile((1.0, 1.25, 1.5, 1.8), "test")
    bound = plan(agents=4, layers=1, proposers=2, rate=0.01, alphas=(1.0,), max_batch=4, profile=profile).batch
    assert bound.max_rate == pytest.approx((4 / 1.8) / 4)  # 2.22x Theorem 1's 0.25
    below = simulate(SimConfig(agents=4, layers=1, proposers=2, rate=0.8 * bound.max_rate, alphas=(1.0,),
                               prompts=40_000, max_batch=4, profile=profile, service="exponential")).summary()
    above = simulate(SimConfig(agents=4, layers=1, proposers=2, rate=1.15 * bound.max_rate, alphas=(1.0,),
                               prompts=40_000, max_batch=4, profile=profile, service="exponential")).summary()
    span = below["window_s"][1] - below["window_s"][0]
    assert below["queue_growth_per_s"] * span < 2 and below["mean_in_system"] < 20
    assert above["queue_growth_per_s"] > 0.05 and above["mean_in_system"] > 5 * below["mean_in_system"]
    # past Theorem 1's bound (2x here) yet bounded: what batching buys
    assert 0.8 * bound.max_rate > 1.7 * 0.25


def test_task_basis_prices_prefill_the_step_basis_leaves_out(tmp_path):
    """A profile whose steps batch well but whose whole tasks (prefill included) batch less: the planner's bound
    follows the tasks by default and the steps only when asked."""
    import json

    from edge_agent.engine.batch_profile import BatchProfile
    from edge_agent.stability.planner import batch_plan

    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"step_s": {"1": 0.010, "2": 0.011, "3": 0.012, "4": 0.018},
                                "task_s": {"1": 0.30, "2": 0.25, "3": 0.22, "4": 0.185}}))
    by_task = BatchProfile.read(path, "task")
    by_step = BatchProfile.read(path, "step")
    assert (by_task.basis, by_step.basis) == ("task", "step")
    assert abs(by_task.speedup(4) - 0.30 / 0.185) < 1e-9  # tasks/s with 4 together against one alone
    assert abs(by_step.speedup(4) - 4 * 0.010 / 0.018) < 1e-9
    plans = [batch_plan(agents=4, layers=1, proposers=2, rate=0.1, alphas=(1.0,), profile=p, max_batch=4)
             for p in (by_task, by_step)]
    assert plans[0].max_rate < plans[1].max_rate
    assert abs(plans[0].max_rate - (0.30 / 0.185) / 4) < 1e-9  # Theorem 1's 1 / (alpha * 4), times the speedup


def test_task_basis_falls_back_to_steps_without_task_times(tmp_path):
    import json

    from edge_agent.engine.batch_profile import BatchProfile

    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"step_s": {"1": 0.01, "2": 0.015}}))
    profile = BatchProfile.read(path, "task")
    assert profile.basis == "step" and profile.step_s == (0.01, 0.015)


def test_a_profile_calibrated_under_load_keeps_its_shape_and_meets_the_measured_slowdown():
    from edge_agent.engine.batch_profile import BatchProfile
    from edge_agent.errors import ConfigError

    profile = BatchProfile((1.0, 1.3, 1.7, 1.9, 2.5, 2.7, 3.0, 3.3), "bench", "task")
    loaded = profile.calibrated(8, 4.8)
    assert loaded.slowdown(8) == pytest.approx(4.8) and loaded.slowdown(1) == 1.0
    stretch = (4.8 - 1) / (3.3 - 1)
    assert loaded.slowdown(4) == pytest.approx(1 + 0.9 * stretch)
    assert loaded.basis == "task" and "4.80 at b = 8" in loaded.source
    assert loaded.speedup(8) == pytest.approx(8 / 4.8)
    with pytest.raises(ConfigError):
        profile.calibrated(1, 2.0)
    with pytest.raises(ConfigError):
        profile.calibrated(8, 0.5)
