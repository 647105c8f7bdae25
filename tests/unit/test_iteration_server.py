"""The simulator's iteration model: prefill as work of its own that stalls the decoding rows, contexts, shared cores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_agent.engine.batch_profile import BatchProfile, TokenCosts
from edge_agent.errors import ConfigError
from edge_agent.stability.simulator import SimConfig, simulate

STEPS = (0.01, 0.015, 0.02, 0.025)  # a decode step of b rows
PREFILL = 0.002  # seconds per prompt token, in chunks of 64


def _costs(context_s: float = 0.0, padding_s: float = 0.0) -> TokenCosts:
    return TokenCosts(BatchProfile(STEPS), step_context=0.0, context_s=context_s, padding_s=padding_s,
                      prefill_fixed_s=0.0, prefill_token_s=PREFILL, prefill_chunk=64)


def _run(arrivals, users, tokens, *, agents=1, max_batch=4, cores=None, costs=None, layers=0, proposers=0):
    cfg = SimConfig(agents=agents, layers=layers, proposers=proposers, rate=0.01, alphas=(1.0,), prompts=1,
                    costs=costs or _costs(), tokens_first=tokens, max_batch=max_batch, cores=cores)
    return simulate(cfg, arrivals=np.asarray(arrivals, dtype=float), users=np.asarray(users))


def test_a_task_alone_is_its_prefill_then_one_step_per_further_token():
    run = _run([0.0], [0], ((100, 10),))
    # 100 tokens in two chunks (0.2 s), then 9 decode steps of one row (the first token came with the prompt)
    assert run.task_end[0] - run.task_start[0] == pytest.approx(100 * PREFILL + 9 * STEPS[0])


def test_prompt_tokens_from_the_prefix_cache_cost_no_prefill_but_stay_in_the_context():
    cached = _run([0.0], [0], ((200, 10, 128),), costs=_costs(context_s=1e-4))
    whole = _run([0.0], [0], ((200, 10),), costs=_costs(context_s=1e-4))
    # 128 of 200 tokens kept: one 72-token chunk prefilled; the 9 decode steps read the same 200-token context
    saved = whole.task_end[0] - cached.task_end[0]
    assert saved == pytest.approx(128 * PREFILL)
    assert cached.task_end[0] - 72 * PREFILL == pytest.approx(whole.task_end[0] - 200 * PREFILL)


def test_a_newcomers_prefill_stalls_the_row_already_decoding():
    run = _run([0.0, 0.0], [0, 0], ((100, 10),))
    # task 0: 2 chunks (0.1 s each) -> decoding from 0.2 s; task 1's 2 chunks then share each iteration with
    # task 0's step (0.01 + 0.1), so task 1 decodes from 0.42 s; then 7 steps of two rows end task 0, and task 1
    # needs 2 more steps alone
    first = 0.2 + 2 * (STEPS[0] + 0.1) + 7 * STEPS[1]
    assert run.task_end[0] == pytest.approx(first)
    assert run.task_end[1] == pytest.approx(first + 2 * STEPS[0])
    # the same two with no prefill cost would decode together from the start
    free = _run([0.0, 0.0], [0, 0], ((1, 10),))
    assert free.task_end[1] < 0.25 < run.task_end[1]


def test_past_max_rows_a_task_waits_fcfs_for_a_free_row():
    run = _run([0.0, 0.0], [0, 0], ((100, 10),), max_batch=1)
    alone = 100 * PREFILL + 9 * STEPS[0]
    assert run.task_start[1] == pytest.approx(run.task_end[0]) == pytest.approx(alone)
    assert run.task_end[1] == pytest.approx(2 * alone)


def test_agents_sharing_cores_slow_each_other_only_while_both_work():
    alone = 100 * PREFILL + 9 * STEPS[0]
    shared = _run([0.0, 0.0], [0, 1], ((100, 10),), agents=2, cores=1.0)
    assert shared.task_end.tolist() == pytest.approx([2 * alone, 2 * alone])
    own = _run([0.0, 0.0], [0, 1], ((100, 10),), agents=2, cores=2.0)
    assert own.task_end.tolist() == pytest.approx([alone, alone])
    # the second agent starts when the first is half done: half a core each until the first ends, then a whole one
    late = _run([0.0, alone / 2], [0, 1], ((100, 10),), agents=2, cores=1.0)
    assert late.task_end[0] == pytest.approx(alone / 2 + alone)  # its second half at half speed
    assert late.task_end[1] == pytest.approx(alone / 2 + alone + alone / 2)  # half done by then, the rest alone


def test_a_long_context_row_slows_the_step_of_every_row():
    costs = _costs(context_s=1e-5, padding_s=1e-6)
    short = _run([0.0, 0.0], [0, 0], ((10, 50),), costs=costs)
    assert costs.step([100.0, 600.0]) == pytest.approx(STEPS[1] + 1e-5 * 700 + 1e-6 * 2 * 600)
    mixed = _run([0.0, 0.0], [0, 0], ((10, 50), (500, 50)), costs=costs)
    assert mixed.task_end.max() > short.task_end.max()


def test_every_prompt_of_a_mesh_is_answered_once_in_the_iteration_model():
    pairs_first, pairs_later = ((40, 60), (45, 128), (30, 20)), ((300, 128), (420, 90))
    cfg = SimConfig(agents=4, layers=1, proposers=2, rate=0.15, alphas=(1.5,), prompts=3000, seed=3,
                    costs=_costs(context_s=4e-6), tokens_first=pairs_first, tokens_synthesis=pairs_later,
                    max_batch=8, cores=2.0, threads=1, policy="speed-aware", candidates=3)
    run = simulate(cfg)
    assert run.task_agent.size == 3000 * 4  # 3 proposers and the aggregation per prompt
    assert np.all(run.task_start >= run.task_arrival) and np.all(run.task_end > run.task_start)
    assert np.all(run.prompt_done > run.prompt_arrival)
    summary = run.summary()
    assert summary["profile_basis"] == "tokens" and summary["cores"] == 2.0
    assert 0 < summary["utilization"] <= 1.0


def test_token_costs_come_from_the_profile_file_or_a_clear_error(tmp_path):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"step_s": {"1": 0.01, "2": 0.015}}))
    with pytest.raises(ConfigError, match="token_costs"):
        TokenCosts.read(path)
    path.write_text(json.dumps({"step_s": {"1": 0.01, "2": 0.015}, "token_costs": {
        "step_context": 62, "context_s": 5e-6, "padding_s": -1e-7, "prefill_fixed_s": 0.001,
        "prefill_token_s": 0.0025, "prefill_chunk": 64}}))
    costs = TokenCosts.read(path)
    assert costs.padding_s == 0.0  # a noisy negative fit is no cost
    assert costs.prefill(100) == pytest.approx(0.251)
    assert costs.step([62.0, 162.0]) == pytest.approx(0.015 + 5e-6 * 100)
    with pytest.raises(ConfigError, match="measured prompt and new tokens"):
        SimConfig(agents=2, layers=0, proposers=0, rate=0.1, alphas=(1.0,), costs=costs)


def _profile_file(tmp_path):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"step_s": {"1": 0.01, "2": 0.013, "3": 0.016, "4": 0.019}, "token_costs": {
        "step_context": 60, "context_s": 0.0, "padding_s": 0.0, "prefill_fixed_s": 0.0,
        "prefill_token_s": 0.002, "prefill_chunk": 64}}))
    return path


def test_plan_and_simulate_in_the_iteration_model_agree_on_where_the_mesh_stops_being_stable(tmp_path, capsys):
    from edge_agent.cli import main

    flags = ["-n", "4", "-M", "1", "-k", "2", "--alpha", "1", "--max-batch", "4", "--batch-profile",
             str(_profile_file(tmp_path)), "--profile-basis", "tokens", "--tokens", "40,100", "--cores", "2"]
    assert main(["plan", *flags, "--rate", "0.1", "--json"]) == 0
    capacity = json.loads(capsys.readouterr().out)["token_capacity"]
    # per prompt: 3 first-step tasks (40 + 99 decode steps of 4 rows) and one whose prompt carries 3 x 100 tokens
    cpu = 3 * (40 * 0.002 + 99 * 0.019 / 4) + (340 * 0.002 + 99 * 0.019 / 4)
    assert capacity["cpu_s_per_prompt"] == pytest.approx(cpu) and capacity["share"] == 0.5
    assert capacity["max_rate"] == pytest.approx(0.5 / cpu)
    assert main(["plan", *flags, "--rate", "0.1"]) == 0
    assert "iteration model" in capsys.readouterr().out

    trends = {}
    for load in (0.6, 1.3):
        assert main(["simulate", *flags, "--rate", str(load * capacity["max_rate"]), "--prompts", "4000",
                     "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["profile_basis"] == "tokens" and out["predicted"]["token_capacity"] == capacity
        trends[load] = out["queue_growth_per_s"]
    assert abs(trends[0.6]) < 0.01 < trends[1.3]


def test_plan_prices_a_synthesis_prompts_cached_start_as_no_prefill(tmp_path, capsys):
    from edge_agent.cli import main

    flags = ["plan", "-n", "4", "-M", "1", "-k", "2", "--alpha", "1", "--max-batch", "4", "--batch-profile",
             str(_profile_file(tmp_path)), "--profile-basis", "tokens", "--tokens", "40,100", "--cores", "2",
             "--rate", "0.1", "--json"]
    capacity = {}
    for cached in (0, 128):
        assert main([*flags, "--synthesis-tokens", f"340,100,{cached}"]) == 0
        capacity[cached] = json.loads(capsys.readouterr().out)["token_capacity"]
    assert capacity[0]["cpu_s_per_prompt"] - capacity[128]["cpu_s_per_prompt"] == pytest.approx(128 * 0.002)
    for bad in ("340,100,340", "340,100,-1", "340,100,1,2"):
        with pytest.raises(SystemExit):
            main([*flags, "--synthesis-tokens", bad])
        err = capsys.readouterr().err
        assert "--synthesis-tokens" in err and ("C (prompt tokens from the prefix cache)" in err or "P,D[,C]" in err)


def test_the_iteration_model_says_what_it_is_missing(tmp_path, capsys):
    from edge_agent.cli import main

    base = ["simulate", "-n", "4", "-M", "1", "-k", "2", "--rate", "0.1", "--alpha", "1", "--profile-basis", "tokens"]
    assert main(base + ["--tokens", "40,100"]) == 1
    assert "needs --batch-profile" in capsys.readouterr().err
    assert main(base + ["--batch-profile", str(_profile_file(tmp_path))]) == 1
    assert "--tokens" in capsys.readouterr().err
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"step_s": {"1": 0.01}}))
    assert main(base + ["--batch-profile", str(bare), "--tokens", "40,100"]) == 1
    assert "token_costs" in capsys.readouterr().err
    # the iteration model's own flags without it would be silently ignored: refused instead
    plain = ["plan", "-n", "4", "-M", "1", "-k", "2", "--rate", "0.1", "--alpha", "1"]
    assert main(plain + ["--tokens", "40,100", "--cores", "2"]) == 1
    err = capsys.readouterr().err
    assert "--tokens" in err and "--cores" in err and "only with --profile-basis tokens" in err


def test_the_model_is_fitted_to_the_agents_from_two_loaded_scenarios():
    from edge_agent.stability.token_calibration import effective_cores, modelled_seconds, step_stretch

    costs = _costs(context_s=2e-6)
    pairs = [(40, 60), (35, 100), (45, 30), (38, 128)]

    def measured(rows: int, cores: float, stretch: float) -> list:
        """What agents of `cores` effective cores and a batch cost `stretch` x the profile's would measure."""
        rounds = [[[(p, d, 0.0)] * rows for p, d in pairs]]  # agent i gets `rows` copies of pairs[i]
        mean = modelled_seconds(costs.stretched(stretch), rounds, rows, cores, 1)
        return [[[(p, d, mean)] * rows for p, d in pairs]]  # only the mean is fitted

    # one task per agent at once, on agents that have 1.5 cores between them (the tail of the round included)
    assert effective_cores(costs, measured(1, 1.5, 1.0), threads=1) == pytest.approx(1.5, rel=1e-3)
    assert effective_cores(costs, measured(1, 4.0, 1.0), threads=1) == pytest.approx(4.0, rel=1e-3)  # all of it
    # four at every agent at once, as agents whose batch costs 2.5x the profile's extra would take them
    assert step_stretch(costs, measured(4, 1.5, 2.5), 4, 1.5, 1) == pytest.approx(2.5, rel=1e-3)
    assert costs.stretched(2.5).step([0.0] * 3) == pytest.approx(STEPS[0] * (1 + 2.5 * (STEPS[2] / STEPS[0] - 1)))
