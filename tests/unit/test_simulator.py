"""The discrete-event simulator against closed forms (M = 0), symmetry (per-agent load) and Theorem 1."""

from __future__ import annotations

import time

import numpy as np
import pytest

from edge_agent.errors import ConfigError
from edge_agent.stability.closed_form import latency, mg1_waiting
from edge_agent.stability.planner import inferences_per_prompt
from edge_agent.stability.simulator import SimConfig, read_samples, simulate

# Prompts per case: the standard error of the time-average grows like 1/(1-rho)^2, so rho = 0.8 gets more.
# With these sizes the relative error's spread across seeds is ~1% (0.3, 0.6) and ~1.2% (0.8): 5% is > 4 sigma.
CLOSED_FORM_CASES = [
    ("deterministic", 0.3, 200_000),
    ("deterministic", 0.6, 300_000),
    ("deterministic", 0.8, 500_000),
    ("exponential", 0.3, 300_000),
    ("exponential", 0.6, 400_000),
    ("exponential", 0.8, 800_000),
]


@pytest.mark.parametrize("service,rho,prompts", CLOSED_FORM_CASES)
def test_m0_matches_md1_and_mm1(service, rho, prompts):
    alpha = 2.0
    run = simulate(SimConfig(agents=4, layers=0, proposers=0, rate=rho / alpha, alphas=(alpha,),
                             prompts=prompts, seed=11, service=service))
    out = run.summary()
    expected = mg1_waiting(rho, 0.0 if service == "deterministic" else 1.0)
    assert out["mean_waiting"] == pytest.approx(expected, rel=0.05)
    assert out["mean_in_system"] == pytest.approx(expected + rho, rel=0.05)
    assert out["mean_utilization"] == pytest.approx(rho, rel=0.02)
    assert out["latency"]["mean"] == pytest.approx(latency(expected, rho / alpha, alpha), rel=0.05)


@pytest.mark.parametrize("layers,proposers", [(1, 1), (1, 2), (2, 1), (2, 3)])
def test_every_agent_carries_the_same_load(layers, proposers):
    # By symmetry every agent receives ((k+1)M+1) * lambda tasks per second and is busy that times alpha.
    rate, alpha = 0.05, 1.5
    run = simulate(SimConfig(agents=4, layers=layers, proposers=proposers, rate=rate, alphas=(alpha,),
                             prompts=60_000, seed=3, service="exponential"))
    ipp = inferences_per_prompt(layers, proposers)
    assert run.task_agent.size == 60_000 * ipp
    for s in run.agent_stats():
        assert s.task_rate == pytest.approx(ipp * rate, rel=0.03)
        assert s.utilization == pytest.approx(ipp * rate * alpha, rel=0.03)


def test_mixed_alphas_load_each_agent_by_its_own_speed():
    alphas = (0.5, 1.0, 1.5, 2.0)
    run = simulate(SimConfig(agents=4, layers=1, proposers=2, rate=0.08, alphas=alphas, prompts=60_000, seed=5))
    for s, a in zip(run.agent_stats(), alphas):
        assert s.utilization == pytest.approx(4 * 0.08 * a, rel=0.03)


def test_layers_respect_dependencies():
    # deterministic alpha = 1: two layers and the aggregation run one after another, so no prompt beats 3 s,
    # and at this light load most prompts take exactly that
    run = simulate(SimConfig(agents=5, layers=2, proposers=2, rate=0.01, alphas=(1.0,), prompts=2_000, seed=2))
    lat = run.prompt_done - run.prompt_arrival
    assert lat.min() == pytest.approx(3.0)
    assert np.median(lat) == pytest.approx(3.0)
    assert run.task_arrival.size == 2_000 * inferences_per_prompt(2, 2)


def test_each_layer_uses_the_origin_and_k_distinct_peers():
    run = simulate(SimConfig(agents=6, layers=1, proposers=3, rate=0.01, alphas=(1.0,), prompts=500, seed=4))
    # at this load prompts do not overlap: group tasks by their arrival time into layers
    by_time: dict[float, list[int]] = {}
    for a, t in zip(run.task_agent.tolist(), run.task_arrival.tolist()):
        by_time.setdefault(t, []).append(a)
    origin = dict(zip(run.prompt_arrival.tolist(), run.prompt_user.tolist()))
    checked = 0
    for t, agents in by_time.items():
        if t in origin:
            assert len(agents) == 4 and len(set(agents)) == 4 and origin[t] in agents
            checked += 1
    assert checked == 500


def test_unstable_above_the_bound_queue_grows_with_the_horizon():
    # (M, k) = (1, 2), alpha = 1: the bound is lambda < 1/4; at 1.3x it every queue grows linearly.
    def in_system(prompts: int) -> float:
        cfg = SimConfig(agents=4, layers=1, proposers=2, rate=1.3 / 4, alphas=(1.0,), prompts=prompts, seed=9,
                        warmup=0.0)
        return simulate(cfg).summary()

    short, long = in_system(20_000), in_system(40_000)
    assert long["mean_in_system"] > 1.7 * short["mean_in_system"]
    assert long["queue_growth_per_s"] > 0.05
    assert long["utilization"] > 0.99


def test_stable_below_the_bound_queue_does_not_grow():
    def summary(prompts: int) -> dict:
        cfg = SimConfig(agents=4, layers=1, proposers=2, rate=0.7 / 4, alphas=(1.0,), prompts=prompts, seed=9)
        return simulate(cfg).summary()

    short, long = summary(40_000), summary(80_000)
    assert long["mean_in_system"] == pytest.approx(short["mean_in_system"], rel=0.1)
    assert abs(long["queue_growth_per_s"]) < 1e-3


def test_speed_aware_is_stable_where_uniform_is_not():
    # alphas (1,1,1,2), (M,k) = (1,2): the paper's bound is 1/8, the speed-aware one 3.5/16; lambda = 0.17.
    base = {"agents": 4, "layers": 1, "proposers": 2, "rate": 0.17, "alphas": (1.0, 1.0, 1.0, 2.0), "prompts": 40_000, "seed": 1}
    uniform = simulate(SimConfig(**base)).summary()
    aware = simulate(SimConfig(**base, policy="speed-aware")).summary()
    assert uniform["queue_growth_per_s"] > 0.01
    assert abs(aware["queue_growth_per_s"]) < 1e-3
    assert aware["mean_in_system"] < 10


def test_least_loaded_waits_less_than_uniform():
    base = {"agents": 6, "layers": 1, "proposers": 2, "rate": 0.15, "alphas": (1.0,), "prompts": 40_000, "seed": 1,
                "service": "exponential"}
    uniform = simulate(SimConfig(**base)).summary()
    least = simulate(SimConfig(**base, policy="least-loaded")).summary()
    assert least["mean_waiting"] < 0.8 * uniform["mean_waiting"]
    assert least["mean_utilization"] == pytest.approx(uniform["mean_utilization"], rel=0.03)


def test_same_seed_same_result():
    cfg = SimConfig(agents=4, layers=1, proposers=2, rate=0.2, alphas=(1.0,), prompts=5_000, seed=7,
                    service="exponential")
    a, b = simulate(cfg).summary(), simulate(cfg).summary()
    a.pop("wall_s"), b.pop("wall_s")
    assert a == b


def test_hundred_thousand_prompts_in_seconds():
    # CPU time, not wall time: the test machine may be shared (0.5-0.7 s when it is not)
    started = time.process_time()
    simulate(SimConfig(agents=4, layers=1, proposers=2, rate=0.2, alphas=(1.0,), prompts=100_000, seed=1))
    assert time.process_time() - started < 5


def test_empirical_service_times(tmp_path):
    path = tmp_path / "times.csv"
    path.write_text("device,seconds\na,1.0\nb,3.0\n")
    samples = read_samples(path)
    assert samples == (1.0, 3.0)
    run = simulate(SimConfig(agents=4, layers=0, proposers=0, rate=0.1, alphas=(2.0,), prompts=20_000,
                             seed=1, service="empirical", samples=samples))
    service = run.task_end - run.task_start
    assert set(np.round(np.unique(service), 9)) == {1.0, 3.0}  # rescaled to mean alpha = 2: 0.5*2, 1.5*2


def test_bad_config_names_the_flag(tmp_path):
    with pytest.raises(ConfigError) as info:
        SimConfig(agents=4, layers=1, proposers=2, rate=0.1, alphas=(1.0,), policy="random")
    assert info.value.problems[0][0] == "--policy"
    with pytest.raises(ConfigError):
        read_samples(tmp_path / "missing.txt")
    (tmp_path / "bad.txt").write_text("1.0\nabc\n")
    with pytest.raises(ConfigError):
        read_samples(tmp_path / "bad.txt")


def test_first_step_and_synthesis_steps_get_their_own_service_times():
    # layer 1 proposals take 1 s, the aggregation 3 s; alpha = the load-weighted mean (3*1 + 1*3) / 4 = 1.5
    run = simulate(SimConfig(agents=4, layers=1, proposers=2, rate=0.001, alphas=(1.5,), prompts=500, seed=1,
                             service="empirical", samples=(1.0,), samples_synthesis=(3.0,)))
    lat = run.prompt_done - run.prompt_arrival
    assert lat.min() == pytest.approx(4.0)
    assert set(np.round(run.task_end - run.task_start, 9)) == {1.0, 3.0}


# Continuous batching (max_batch > 1) against the birth-death closed form for M = 0 and exponential work.
BATCH_CASES = [
    (2, {1: 1.0, 2: 2.0}, 0.6),  # batching gains nothing: M/M/1 in the number in system
    (4, {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0}, 2.4),  # free batching: M/M/4
    (4, {1: 1.0, 2: 1.2, 3: 1.5, 4: 1.9}, 1.4),  # a measured-like profile, at 0.67 of its capacity 4/1.9
]


@pytest.mark.parametrize("max_batch,steps,rho", BATCH_CASES)
def test_continuous_batching_matches_the_birth_death_chain(max_batch, steps, rho):
    from edge_agent.engine.batch_profile import BatchProfile
    from edge_agent.stability.closed_form import batched_in_system

    alpha = 2.0
    profile = BatchProfile(tuple(steps[b] for b in sorted(steps)), "test")
    run = simulate(SimConfig(agents=2, layers=0, proposers=0, rate=rho / alpha, alphas=(alpha,), prompts=300_000,
                             seed=5, service="exponential", max_batch=max_batch, profile=profile))
    expected = batched_in_system(rho / alpha, alpha, max_batch, profile.slowdown)
    out = run.summary()
    assert out["mean_in_system"] == pytest.approx(expected, rel=0.05)
    assert out["latency"]["mean"] == pytest.approx(expected / (rho / alpha), rel=0.05)  # Little's law
    assert 0 < out["mean_utilization"] < 1


def test_closed_form_special_cases():
    from edge_agent.stability.closed_form import batched_in_system, mg1_waiting

    rho = 0.7
    assert batched_in_system(rho, 1.0, 1, lambda b: 1.0) == pytest.approx(mg1_waiting(rho, 1.0) + rho)
    assert batched_in_system(rho, 1.0, 3, lambda b: b) == pytest.approx(rho / (1 - rho))
    # M/M/2 with a = 1.4: L = a + P_wait * rho2 / (1 - rho2), rho2 = 0.7, P_wait (Erlang C) = a^2/2 / (1-rho2) / Z
    a, c = 1.4, 2
    z = 1 + a + a * a / 2 / (1 - a / c)
    erlang_c = a * a / 2 / (1 - a / c) / z
    assert batched_in_system(a, 1.0, c, lambda b: 1.0) == pytest.approx(a + erlang_c * (a / c) / (1 - a / c))


def test_deterministic_batches_of_simultaneous_arrivals_end_together():
    """Free batching, deterministic work: two tasks arriving together end together after one service time."""
    from edge_agent.engine.batch_profile import BatchProfile

    cfg = SimConfig(agents=1, layers=0, proposers=0, rate=0.1, alphas=(1.0,), max_batch=2,
                    profile=BatchProfile((1.0, 1.5), "test"))
    run = simulate(cfg, arrivals=np.array([0.0, 0.0, 0.5, 10.0]), users=np.array([0, 0, 0, 0]))
    # two rows at 1.5x: both done at 1.5 s (each had 1 s of work); the third joins at 1.5 s and runs alone
    assert run.task_end.tolist() == pytest.approx([1.5, 1.5, 2.5, 11.0])
    assert run.task_start.tolist() == pytest.approx([0.0, 0.0, 1.5, 10.0])
