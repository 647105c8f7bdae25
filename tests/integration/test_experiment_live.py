"""The live experiment on a real local mesh (synthetic engine) against the simulator, and `plan --broker`."""

from __future__ import annotations

import argparse
import json
import uuid

import pytest

from edge_agent.local.mesh import LocalMesh
from edge_agent.stability.commands import register
from edge_agent.stability.experiment import RunSpec, predict, read_run_csv, run_stats, write_run_csv
from edge_agent.stability.live import ExperimentSettings, advertised_alphas, mesh_sections, run_live

pytestmark = pytest.mark.slow

ALPHA = 0.05


def test_live_run_matches_the_simulator_and_agents_advertise_alpha(broker, tmp_path, capsys):
    settings = ExperimentSettings(agents=4, grid=[(1, 2)], rates=None, loads=[0.5], duration_s=25.0,
                                  engine="synthetic", alpha_s=ALPHA, out=tmp_path, progress=False,
                                  sim_prompts=50_000, warmup_s=3.0, max_batch=1)
    assert mesh_sections(settings)["engine"]["max_batch"] == 1  # Theorem 1: one task at a time, explicitly
    [spec] = settings.specs()
    assert spec == RunSpec(agents=4, layers=1, proposers=2, rate=pytest.approx(0.5 / (4 * ALPHA)),
                           duration_s=25.0, alpha_s=ALPHA, warmup_s=3.0)
    root = f"test/{uuid.uuid4().hex[:8]}"
    with LocalMesh(4, **mesh_sections(settings), broker=broker, topic_root=root) as mesh:
        prompts, samples = run_live(mesh, spec, settings)
        alphas = advertised_alphas(host=broker.host, port=broker.port, topic_root=root, wait_s=1.0)

        # `edge-moa plan --broker` reads the same advertisement
        parser = argparse.ArgumentParser()
        register(parser.add_subparsers())
        args = parser.parse_args(["plan", "--agents", "4", "--layers", "1", "--proposers", "2", "--rate",
                                  str(spec.rate), "--broker", f"{broker.host}:{broker.port}",
                                  "--topic-root", root, "--json"])
        assert args.func(args) == 0
        planned = json.loads(capsys.readouterr().out)

    assert len(prompts) > 100
    assert all(p.answered_at is not None and p.error is None for p in prompts)
    assert all(p.inferences == 4 for p in prompts)
    # every traced task says what its prefill read and what it generated (the iteration model's workload); a
    # synthesis prompt carries the three answers of the first step, so it is longer than the user's prompt
    steps = [i for p in prompts for i in p.inference_s]
    assert all(i.prompt_tokens > 0 and i.new_tokens > 0 for i in steps)
    first = [i.prompt_tokens for i in steps if i.step == 1]
    later = [i.prompt_tokens for i in steps if i.step == 2]
    assert len(first) == 3 * len(later) and min(later) > max(first)
    write_run_csv(tmp_path, spec, prompts, samples)
    read_back = read_run_csv(tmp_path, spec.name)[1][0].inference_s
    assert [i._replace(seconds=round(i.seconds, 4)) for i in prompts[0].inference_s] == read_back
    assert (tmp_path / f"{spec.name}.queue.csv").exists()

    stats = run_stats(spec, prompts, samples)
    sim = predict(spec, prompts, steady_prompts=settings.sim_prompts)
    # utilisation 0.5 per agent; a 25 s run is short (and the busiest of four agents is biased up), so the
    # tolerances are wider than those of the documented 150-180 s runs (docs/stability.md: 1-9%)
    report = (f"live alpha {stats.inference_mean_s:.4f} util {stats.utilization:.3f} in system {stats.mean_in_system:.3f} latency "
              f"{stats.latency_mean:.3f}; sim util {sim['utilization']:.3f} in system {sim['mean_in_system']:.3f} "
              f"latency {sim['latency']['mean']:.3f}")
    # the synthetic engine serves its service time on a busy machine too: a late wake-up is made up by the next
    # steps (32 per task), so the 4 agents' CPU does not stretch alpha (it had, to 1.3-1.6x, failing the checks below)
    assert stats.inference_mean_s == pytest.approx(ALPHA, rel=0.1), report
    assert 0.4 < stats.utilization < 0.8, report
    assert stats.mean_in_system == pytest.approx(sim["mean_in_system"], rel=0.3), report
    assert stats.latency_mean == pytest.approx(sim["latency"]["mean"], rel=0.3), report

    assert sorted(alphas) == mesh.devices
    assert all(a == pytest.approx(ALPHA, rel=0.2) for a in alphas.values()), alphas
    assert planned["alphas"] == [pytest.approx(ALPHA, rel=0.2)] * 4
    assert planned["stable"] is True


def test_a_mixed_mesh_is_calibrated_per_agent(tiny_model_dir, tiny_eos_model_dir, tmp_path):
    """`experiment --models A,B`: each agent runs its own model, and alpha is measured per agent (the EOS model
    answers at once, the other decodes every token), so the planner and simulator get each agent's own."""
    from edge_agent.stability.live import _mesh, calibrate, calibrated

    models = (str(tiny_model_dir), str(tiny_eos_model_dir))
    settings = ExperimentSettings(agents=2, grid=[(1, 1)], rates=None, loads=[0.5], duration_s=10.0,
                                  engine="onnx", alpha_s=None, out=tmp_path, progress=False, models=models,
                                  max_new_tokens=64, calibration="loaded")
    with _mesh(settings, "uniform") as mesh:
        seconds = calibrate(mesh, settings, per_agent=2)
        configured = [mesh.config_path(d).read_text() for d in mesh.devices]
    assert all(model in text for model, text in zip(models, configured))
    assert sorted(seconds) == ["agent1", "agent2"] and all(len(v) == 2 for v in seconds.values())
    done = calibrated(settings, seconds, ["agent1", "agent2"])
    assert done.alphas[0] > 3 * done.alphas[1]  # 64 decoded tokens against an immediate EOS
    assert done.alpha_s == max(done.alphas)
    [spec] = done.specs()
    assert spec.alphas == done.alphas and spec.rate == pytest.approx(0.5 / (3 * done.alpha_s))


def test_calibration_of_one_model_keeps_one_alpha(tmp_path):
    from edge_agent.errors import InferenceError
    from edge_agent.stability.live import calibrated

    base = ExperimentSettings(agents=2, grid=[(1, 1)], rates=None, loads=[1.0], duration_s=10.0, engine="onnx",
                              alpha_s=None, out=tmp_path)
    one = calibrated(base, {"agent1": [1.0, 3.0], "agent2": [2.0]}, ["agent1", "agent2"])
    assert one.alpha_s == pytest.approx(2.0) and one.alphas == ()
    mixed = ExperimentSettings(**{**base.__dict__, "models": ("a", "b")})
    with pytest.raises(InferenceError, match="agent2"):
        calibrated(mixed, {"agent1": [1.0]}, ["agent1", "agent2"])


def test_the_slowdown_of_a_full_batch_is_measured_on_the_live_agents(broker, tmp_path):
    """`calibrate loaded` with batching also measures what max_batch rows at once cost on these agents; on the
    synthetic engine (a step of b rows costs 1 + 0.25 (b - 1) steps of one) that is its own slowdown(4) = 1.75."""
    from edge_agent.stability.live import batch_slowdown

    settings = ExperimentSettings(agents=2, grid=[(1, 1)], rates=None, loads=[0.5], duration_s=10.0,
                                  engine="synthetic", alpha_s=0.2, out=tmp_path, progress=False, max_batch=4)
    root = f"test/{uuid.uuid4().hex[:8]}"
    with LocalMesh(2, **mesh_sections(settings), broker=broker, topic_root=root) as mesh:
        measured = batch_slowdown(mesh, settings, rounds=1)
    assert measured == pytest.approx(1.75, rel=0.2)
