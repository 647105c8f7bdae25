"""The live experiment's pure parts: grid, Poisson schedule, statistics, CSV round trip, table and plots."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from edge_agent.errors import ConfigError
from edge_agent.stability.experiment import (
    Inference,
    PromptRecord,
    QueueSample,
    RunSpec,
    load_results,
    parse_grid,
    poisson_schedule,
    predict,
    read_run_csv,
    run_stats,
    summary_table,
    write_run_csv,
    write_sim_json,
    write_summary,
)


def test_parse_grid():
    assert parse_grid("0,0;1,1; 1,2;") == [(0, 0), (1, 1), (1, 2)]
    for bad in ("", "1", "1,a", "-1,0"):
        with pytest.raises(ConfigError):
            parse_grid(bad)


def test_poisson_schedule_rate_and_independence():
    devices = ["a", "b", "c", "d"]
    events = poisson_schedule(devices, rate=2.0, duration_s=5000.0, seed=1)
    assert events == sorted(events)
    assert all(0 <= t < 5000 for t, _ in events)
    for d in devices:
        times = np.array([t for t, dev in events if dev == d])
        assert times.size == pytest.approx(10_000, rel=0.05)
        gaps = np.diff(times)
        assert gaps.mean() == pytest.approx(0.5, rel=0.05)
        assert gaps.std() == pytest.approx(0.5, rel=0.05)  # exponential: sd = mean
    assert poisson_schedule(devices, 2.0, 100.0, seed=1) == poisson_schedule(devices, 2.0, 100.0, seed=1)


def _fake_run():
    spec = RunSpec(agents=2, layers=1, proposers=1, rate=0.5, duration_s=10.0, alpha_s=0.1, warmup_s=2.0)
    prompts = [
        PromptRecord("r1", "a", sent_at=1.0, answered_at=1.5, agent_latency_s=0.49, inferences=3,
                     inference_s=[Inference("a", 0.1, 1), Inference("b", 0.1, 1), Inference("a", 0.1, 2)]),
        PromptRecord("r2", "b", sent_at=3.0, answered_at=3.4, agent_latency_s=0.39, inferences=3,
                     inference_s=[Inference("b", 0.1, 1), Inference("a", 0.12, 1), Inference("b", 0.1, 2)]),
        PromptRecord("r3", "a", sent_at=5.0, answered_at=5.6, agent_latency_s=0.59, inferences=3,
                     inference_s=[Inference("a", 0.1, 1), Inference("b", 0.1, 1), Inference("a", 0.1, 2)]),
        PromptRecord("r4", "b", sent_at=7.0, answered_at=7.1, error="queue_full"),
    ]
    samples = [QueueSample(t=float(t), device=d, queue_length=q, busy=q > 0)
               for t in range(12) for d, q in (("a", t % 3), ("b", 1))]
    return spec, prompts, samples


def test_run_stats_uses_the_window():
    spec, prompts, samples = _fake_run()
    s = run_stats(spec, prompts, samples)
    assert s.prompts_sent == 4 and s.prompts_answered == 4 and s.errors == 1
    assert s.latency_mean == pytest.approx((0.4 + 0.6) / 2)  # r1 is before the warm-up, r4 failed
    # window t in [2, 10): a cycles 2,0,1,2,0,1,2,0 -> mean 1; b always 1
    assert s.mean_in_system == pytest.approx((1.0 + 1.0) / 2)
    assert s.mean_waiting == pytest.approx(((1 + 0 + 0 + 1 + 0 + 0 + 1 + 0) / 8 + 0) / 2)
    assert s.utilization == 1.0
    assert s.inferences_per_prompt == 3
    assert s.inference_mean_s == pytest.approx(0.9 / 9 + 0.02 / 9)


def test_csv_round_trip_summary_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    from edge_agent.stability.plot import plot_all

    spec, prompts, samples = _fake_run()
    write_run_csv(tmp_path, spec, prompts, samples)
    sim = {"mean_waiting": 0.3, "mean_in_system": 1.0, "utilization": 0.3, "queue_growth_per_s": 0.0,
           "latency": {"mean": 0.5, "p50": 0.5, "p95": 0.6, "p99": 0.7}}
    write_sim_json(tmp_path, spec, sim)
    [loaded] = load_results(tmp_path)
    assert loaded.row() == {**run_stats(spec, prompts, samples).row(), **{k: loaded.row()[k] for k in loaded.row()
                                                                         if k.startswith("sim_")}}
    assert loaded.sim == sim
    table = write_summary(tmp_path, [loaded])
    assert "| M = 1, k = 1 |" in table and "+0%" in table
    assert (tmp_path / "summary.csv").read_text().startswith("layers,proposers,rate")
    for path in plot_all(tmp_path, [loaded]):
        assert path.exists() and path.stat().st_size > 1000
    assert summary_table([]).count("\n") == 1


def test_reads_csv_written_before_steps_were_recorded(tmp_path):
    spec, prompts, samples = _fake_run()
    write_run_csv(tmp_path, spec, prompts, samples)
    path = tmp_path / f"{spec.name}.prompts.csv"
    path.write_text(path.read_text().replace("a:1:0.1000", "a:0.1000"))
    _, loaded, _ = read_run_csv(tmp_path, spec.name)
    assert loaded[0].inference_s[0] == Inference("a", 0.1, 0)
    assert loaded[1].inference_s[0] == Inference("b", 0.1, 1)


def test_specs_per_policy_and_load_relative_to_the_papers_bound(tmp_path):
    from edge_agent.stability.live import ExperimentSettings

    s = ExperimentSettings(agents=4, grid=[(1, 2)], rates=None, loads=[0.5, 1.5], duration_s=100.0,
                           engine="synthetic", alpha_s=0.2, out=tmp_path, alphas=(0.1, 0.1, 0.1, 0.2),
                           policies=("uniform", "speed-aware"))
    specs = s.specs()
    assert [(x.rate, x.policy) for x in specs] == [(pytest.approx(0.625), "uniform"),
                                                  (pytest.approx(0.625), "speed-aware"),
                                                  (pytest.approx(1.875), "uniform"),
                                                  (pytest.approx(1.875), "speed-aware")]
    assert specs[1].name == "M1_k2_rate0.625_speed-aware" and specs[0].name == "M1_k2_rate0.625"
    assert all(x.warmup_s == 10.0 and x.alpha_s == 0.2 for x in specs)


def test_predict_replays_mixed_speeds_with_each_agents_measured_time():
    spec = RunSpec(agents=4, layers=1, proposers=2, rate=0.5, duration_s=100.0, alpha_s=0.2, warmup_s=10.0,
                   alphas=(0.1, 0.1, 0.1, 0.2), policy="speed-aware")
    rng = np.random.default_rng(0)
    prompts = []
    for i, t in enumerate(np.sort(rng.uniform(0, 100, 200))):
        device = f"agent{i % 4 + 1}"
        prompts.append(PromptRecord(f"r{i}", device, sent_at=float(t), answered_at=float(t) + 0.5, inferences=4,
                                    inference_s=[Inference(f"agent{d}", 0.2 if d == 4 else 0.1, 1)
                                                 for d in (1, 2, 3, 4)]))
    sim = predict(spec, prompts, steady_prompts=20_000, replays=3)
    assert sim["simulated_alphas"] == [pytest.approx(0.1)] * 3 + [pytest.approx(0.2)]
    assert sim["steady"]["policy"] == "speed-aware" and sim["steady"]["candidates"] == 3
    assert len(sim["trace_t"]) == len(sim["trace_in_system"]) == 201
    assert 0 < sim["mean_in_system"] < 2


def _batched_run(engine: str, batch_profile: str = ""):
    """A batched run whose measured per-task seconds (0.3 first step, 0.6 later) are 3x the solo alpha (0.1)."""
    spec = RunSpec(agents=4, layers=1, proposers=2, rate=1.0, duration_s=100.0, alpha_s=0.1, warmup_s=10.0,
                   engine=engine, max_batch=4, batch_profile=batch_profile)
    rng = np.random.default_rng(1)
    prompts = []
    for i, t in enumerate(np.sort(rng.uniform(0, 100, 400))):
        trace = [Inference(f"agent{d}", 0.3, 1) for d in (1, 2, 3)] + [Inference(f"agent{i % 4 + 1}", 0.6, 2)]
        prompts.append(PromptRecord(f"r{i}", f"agent{i % 4 + 1}", sent_at=float(t), answered_at=float(t) + 1.0,
                                    inferences=4, inference_s=trace))
    return spec, prompts


def test_predict_feeds_a_batched_run_the_solo_alpha_not_the_times_measured_under_batching(tmp_path):
    from edge_agent.stability.experiment import batch_profile
    from edge_agent.stability.simulator import SimConfig, simulate

    spec, prompts = _batched_run("synthetic")
    sim = predict(spec, prompts, steady_prompts=5_000, replays=2)
    assert sim["simulated_alpha_s"] == pytest.approx(0.1)  # not 0.375, the mean measured under batching
    profile = batch_profile(spec)
    assert profile is not None and profile.slowdown(2) == pytest.approx(1.25)  # the synthetic engine's default
    arrivals = np.array([p.sent_at for p in prompts])
    users = np.array([int(p.device[-1]) - 1 for p in prompts])
    solo = [simulate(SimConfig(agents=4, layers=1, proposers=2, rate=1.0, alphas=(0.1,), max_batch=4,
                               profile=profile, seed=spec.seed + 1 + r), arrivals=arrivals, users=users,
                     window=(10.0, 100.0)).summary()["mean_in_system"] for r in range(2)]
    assert sim["mean_in_system"] == pytest.approx(np.mean(solo))

    # the real model: the calibrated solo alpha, the measured times' shape (synthesis twice the first step)
    path = tmp_path / "profile.json"
    path.write_text('{"step_s": {"1": 0.03, "2": 0.045, "3": 0.051, "4": 0.057}}')
    spec, prompts = _batched_run("onnx", str(path))
    sim = predict(spec, prompts, steady_prompts=5_000, replays=2)
    # the first step at the calibrated 0.1 s, synthesis twice that as measured: mean (3 x 0.1 + 0.2) / 4
    assert sim["simulated_alpha_s"] == pytest.approx(0.125)
    assert sim["steady"]["utilization"] < 0.5  # at 3x the per-task time it would be past 1 (4 tasks/s per agent)


def test_predict_unbatched_run_still_uses_the_measured_times():
    spec, prompts = _batched_run("onnx")
    spec = RunSpec(**{**spec.__dict__, "max_batch": 1, "rate": 0.5})
    sim = predict(spec, prompts, steady_prompts=5_000, replays=2)
    assert sim["simulated_alpha_s"] == pytest.approx(0.375)


def test_the_agents_batch_by_default_but_theorem_1_runs_pin_one_task_at_a_time(tmp_path):
    from edge_agent.config import EngineSection
    from edge_agent.stability.live import ExperimentSettings, mesh_sections

    assert EngineSection().max_batch == 4  # the best measured for the default model (docs/stability.md 6e)
    s = ExperimentSettings(agents=4, grid=[(1, 2)], rates=None, loads=[0.7], duration_s=10.0, engine="synthetic",
                           alpha_s=0.1, out=tmp_path)
    assert mesh_sections(s)["engine"]["max_batch"] == 1
    assert mesh_sections(ExperimentSettings(**{**s.__dict__, "max_batch": 4}))["engine"]["max_batch"] == 4
    onnx = ExperimentSettings(**{**s.__dict__, "engine": "onnx"})
    assert "prefix_cache_mb" not in mesh_sections(onnx)["engine"]  # the config's default (on)
    assert mesh_sections(ExperimentSettings(**{**onnx.__dict__, "prefix_cache_mb": 0}))["engine"]["prefix_cache_mb"] == 0


def test_experiment_models_are_refused_off_the_onnx_engine_and_alone(tmp_path, capsys):
    """`--models` names one model per agent of a real mesh: with the synthetic engine or one model it is a usage
    error that says so, before any mesh starts."""
    from edge_agent.cli import main

    code = main(["experiment", "--engine", "synthetic", "--models", "a,b", "--grid", "1,1", "--load", "0.5",
                 "--duration", "5", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code != 0 and "--models" in err and "--engine onnx" in err
    code = main(["experiment", "--engine", "onnx", "--models", "a", "--grid", "1,1", "--load", "0.5",
                 "--duration", "5", "--out", str(tmp_path)])
    assert code != 0 and "at least two agents" in capsys.readouterr().err


def test_a_batched_run_is_simulated_with_the_slowdown_measured_under_load(tmp_path):
    import json

    from edge_agent.stability.experiment import RunSpec, batch_profile

    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"step_s": {"1": 0.01, "2": 0.012, "3": 0.014, "4": 0.016},
                                "task_s": {"1": 1.0, "2": 0.6, "3": 0.5, "4": 0.45}}))
    spec = RunSpec(agents=4, layers=1, proposers=2, rate=0.1, duration_s=10, alpha_s=1.0, engine="onnx",
                   max_batch=4, batch_profile=str(path))
    assert batch_profile(spec).slowdown(4) == pytest.approx(1.8)  # 4 x 0.45 / 1.0, by tasks
    loaded = replace(spec, batch_slowdown=2.6)
    assert batch_profile(loaded).slowdown(4) == pytest.approx(2.6)


def test_predict_in_the_iteration_model_reads_each_tasks_tokens_and_the_shared_cores(tmp_path):
    """`--profile-basis tokens`: the run's traced (prompt, new) tokens priced by the profile's token costs; on a
    machine whose cores the agents share the prediction is slower than with a board each, and the capacity bound
    comes beside it."""
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"step_s": {"1": 0.01, "2": 0.013, "3": 0.016, "4": 0.019}, "token_costs": {
        "step_context": 60, "context_s": 5e-6, "padding_s": 1e-6, "prefill_fixed_s": 0.0,
        "prefill_token_s": 0.0025, "prefill_chunk": 64}}))
    spec, prompts = _batched_run("onnx", str(path))
    with pytest.raises(ValueError, match="no token counts"):
        predict(replace(spec, profile_basis="tokens"), prompts, steady_prompts=2_000, replays=1)
    for p in prompts:
        p.inference_s = [i._replace(prompt_tokens=40 if i.step == 1 else 300, new_tokens=30) for i in p.inference_s]
    shared = replace(spec, profile_basis="tokens", rate=0.5, cores=2.0, threads=1)
    alone = replace(shared, cores=0.0)
    with_cores = predict(shared, prompts, steady_prompts=2_000, replays=2)
    without = predict(alone, prompts, steady_prompts=2_000, replays=2)
    assert with_cores["steady"]["profile_basis"] == "tokens" and with_cores["steady"]["cores"] == 2.0
    assert with_cores["latency"]["mean"] > without["latency"]["mean"]
    capacity = with_cores["token_capacity"]
    assert capacity["share"] == 0.5 and without["token_capacity"]["share"] == 1.0
    # per prompt: 3 tasks of 40 prompt tokens + one of 300, each 29 decode steps shared by 4 rows
    # (the first step's contexts, 40 + 30 / 2, are under the profile's 60: no extra)
    cpu = 3 * 0.1 + 0.75 + 3 * 29 * 0.019 / 4 + 29 * (0.019 + 5e-6 * 4 * 255 + 1e-6 * 4 * 255) / 4
    assert capacity["cpu_s_per_prompt"] == pytest.approx(cpu)
    assert capacity["max_rate"] == pytest.approx(0.5 / cpu)
    assert 1.0 < capacity["speedup"] < 4.0  # prefill does not batch


def test_traced_tokens_and_prefix_cache_hits_survive_the_csv_and_reach_the_iteration_model(tmp_path):
    from edge_agent.stability.experiment import token_work

    spec, prompts, samples = _fake_run()
    prompts[0].inference_s = [Inference("a", 0.1, 1, 40, 30), Inference("b", 0.1, 1, 42, 31),
                              Inference("a", 0.3, 2, 300, 60, 128)]
    write_run_csv(tmp_path, spec, prompts, samples)
    _, loaded, _ = read_run_csv(tmp_path, spec.name)
    assert loaded[0].inference_s == prompts[0].inference_s
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"step_s": {"1": 0.01, "2": 0.012}, "token_costs": {
        "step_context": 0.0, "context_s": 0.0, "padding_s": 0.0, "prefill_fixed_s": 0.0, "prefill_token_s": 0.002,
        "prefill_chunk": 64}}))
    work = token_work(replace(spec, batch_profile=str(profile)), loaded[:1])
    assert work["tokens_first"] == ((40, 30, 0), (42, 31, 0)) and work["tokens_synthesis"] == ((300, 60, 128),)
