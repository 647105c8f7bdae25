"""`edge-moa eval` and `edge-moa judge` as real processes: a local mesh of the tiny model, the tiny model as judge."""

import json
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow

DATASETS = ["selfinstruct", "oasst", "koala", "helpful_base", "vicuna"]


def edge_moa(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "edge_agent", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture
def instructions(tmp_path):
    """A small file in AlpacaEval's format: 10 instructions over 5 datasets, each with a reference output."""
    rows = [{"instruction": f"Question {i}: name a {['color', 'fruit', 'tool', 'city', 'song'][i % 5]}.",
             "output": " ".join(f"reference{i} word{j}" for j in range(20)), "generator": "example",
             "dataset": DATASETS[i % 5], "datasplit": "eval"} for i in range(10)]
    path = tmp_path / "instructions.json"
    path.write_text(json.dumps(rows))
    return path


def test_eval_writes_alpaca_eval_outputs_per_configuration_and_resumes(tiny_model_dir, instructions, tmp_path):
    out = tmp_path / "out"
    common = ["eval", "--instructions", instructions, "--configs", "0,0;1,2", "--out", out, "--agents", 3,
              "--model", tiny_model_dir, "--max-new-tokens", 6, "--workdir", tmp_path / "mesh"]
    first = edge_moa(*common, "--limit", 5, "--seed", 1)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "ETA" in first.stderr
    files = sorted(p.name for p in out.glob("*.json"))
    assert files == ["tiny-random_M0_k0.json", "tiny-random_M1_k2.json"]
    m1 = json.loads((out / "tiny-random_M1_k2.json").read_text())
    assert len(m1) == 5 and len({r["dataset"] for r in m1}) == 5  # stratified: one of each dataset
    assert all(set(r) == {"instruction", "output", "generator", "dataset", "datasplit"} for r in m1)
    assert {r["generator"] for r in m1} == {"tiny-random_M1_k2"}
    stats = [json.loads(line) for line in (out / "tiny-random_M1_k2.stats.jsonl").read_text().splitlines()]
    assert [s["inferences"] for s in stats] == [4] * 5  # (k+1)*M + 1
    assert all(s["latency_s"] > 0 and s["board_s"] > 0 and s["output_tokens"] >= 1 for s in stats)
    assert all(0 <= s["queue_length"] <= 3 * 4 for s in stats)  # the agents' mean queue while it was asked
    m0_stats = (out / "tiny-random_M0_k0.stats.jsonl").read_text().splitlines()
    assert [json.loads(line)["inferences"] for line in m0_stats] == [1] * 5

    second = edge_moa(*common)  # all 10 now: the 5 done are kept, only the other 5 are asked
    assert second.returncode == 0, second.stderr[-3000:]
    assert "tiny-random_M1_k2: 5/10 already done" in second.stderr
    m1_all = json.loads((out / "tiny-random_M1_k2.json").read_text())
    assert len(m1_all) == 10 and m1_all[:0] == []
    assert {r["instruction"]: r["output"] for r in m1}.items() <= {r["instruction"]: r["output"]
                                                                    for r in m1_all}.items()
    assert len((out / "tiny-random_M1_k2.stats.jsonl").read_text().splitlines()) == 10

    judged = edge_moa("judge", out / "tiny-random_M1_k2.json", "--against", out / "tiny-random_M0_k0.json",
                      "--judge", f"local:{tiny_model_dir}", "--limit", 3, "--json", "--threads", 1)
    summary = json.loads(judged.stdout)  # the costs of both sides come from the stats files beside them
    assert summary["n"] == 3 and summary["mean_inferences_a"] == 4 and summary["mean_inferences_b"] == 1
    assert summary["mean_board_s_a"] > 0 and summary["mean_latency_s_b"] > 0
    assert summary["mean_queue_length_a"] >= 0 and summary["mean_queue_length_b"] >= 0


def test_ctrl_c_keeps_finished_outputs(tiny_model_dir, tmp_path):
    rows = [{"instruction": f"Tell me about topic {i}.", "dataset": DATASETS[i % 5]} for i in range(40)]
    (tmp_path / "many.json").write_text(json.dumps(rows))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent", "eval", "--instructions", str(tmp_path / "many.json"),
                             "--configs", "1,2", "--out", str(out), "--agents", "3", "--model", str(tiny_model_dir),
                             "--max-new-tokens", "200", "--workdir", str(tmp_path / "mesh")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stats = out / "tiny-random_M1_k2.stats.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not stats.exists() or len(stats.read_text().splitlines()) < 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    kept = json.loads((out / "tiny-random_M1_k2.json").read_text())
    assert 2 <= len(kept) < 40
    rerun = edge_moa("eval", "--instructions", tmp_path / "many.json", "--configs", "1,2", "--out", out,
                     "--agents", 3, "--model", tiny_model_dir, "--max-new-tokens", 4, "--limit", 40)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{len(kept)}/40 already done" in rerun.stderr
    final = json.loads((out / "tiny-random_M1_k2.json").read_text())
    assert len(final) == 40 and [r["instruction"] for r in final] == [r["instruction"] for r in rows]
    assert {r["instruction"]: r["output"] for r in kept}.items() <= {r["instruction"]: r["output"]
                                                                      for r in final}.items()


def test_judge_with_the_onnx_engine_writes_resumable_verdicts(tiny_model_dir, instructions, tmp_path):
    rows = json.loads(instructions.read_text())
    a = [dict(r, output=f"A long and careful answer to: {r['instruction']}", generator="a") for r in rows]
    b = [dict(r, output="no", generator="b") for r in rows[:8]]
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    verdicts = tmp_path / "v.jsonl"
    args = ["judge", tmp_path / "a.json", "--against", tmp_path / "b.json", "--judge", f"local:{tiny_model_dir}",
            "--verdicts", verdicts, "--threads", 1]
    result = edge_moa(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["n"] == 8 and summary["judge"] == "onnx:tiny-random"
    assert 0 <= summary["ci_low"] <= summary["win_rate"] <= summary["ci_high"] <= 1
    assert summary["mean_len_a"] > summary["mean_len_b"] == 2 and 0 <= summary["flip_rate"] <= 1
    lines = [json.loads(line) for line in verdicts.read_text().splitlines()]
    assert len(lines) == 8
    for line in lines:  # both orders were asked, and the verdict follows from their mean
        assert 0 < line["p_a_first"] < 1 and 0 < line["p_a_second"] < 1
        assert line["preference"] == pytest.approx((line["p_a_first"] + line["p_a_second"]) / 2, abs=1e-5)
        assert line["verdict"] == (1.0 if line["preference"] > 0.5 else 0.0 if line["preference"] < 0.5 else 0.5)
    again = edge_moa(*args, "--json")  # nothing new to judge: same summary, no new lines
    assert json.loads(again.stdout) == summary
    assert len(verdicts.read_text().splitlines()) == 8
    partial = tmp_path / "partial.jsonl"  # a run stopped after 3 pairs: --no-new summarizes them, loads no judge
    partial.write_text("".join(line + "\n" for line in verdicts.read_text().splitlines()[:3]))
    so_far = edge_moa("judge", tmp_path / "a.json", "--against", tmp_path / "b.json", "--judge", "local:nowhere",
                      "--verdicts", partial, "--no-new", "--json")
    assert so_far.returncode == 0, so_far.stderr[-2000:]
    assert json.loads(so_far.stdout)["n"] == 3

    compared = edge_moa("judge", "--compare", verdicts, partial, "--json")  # the full run against its first 3
    assert compared.returncode == 0, compared.stderr[-2000:]
    paired = json.loads(compared.stdout)
    assert paired["n"] == 3 and paired["difference"] == 0 and paired["same_verdict"] == 1
    absent = edge_moa("judge", "--compare", verdicts, tmp_path / "absent.jsonl")
    assert absent.returncode == 1 and "absent.jsonl" in absent.stderr and "no such file" in absent.stderr

    reference = edge_moa("judge", tmp_path / "b.json", "--against", "reference", "--instructions", instructions,
                         "--judge", f"local:{tiny_model_dir}", "--json", "--threads", 1)
    assert reference.returncode == 0, reference.stderr[-2000:]
    assert json.loads(reference.stdout)["n"] == 8 and json.loads(reference.stdout)["mean_len_b"] > 100


def test_judge_sanity_reports_accuracy_and_flip_rate(tiny_model_dir, instructions):
    result = edge_moa("judge", "--sanity", "--sanity-n", 4, "--instructions", instructions,
                      "--judge", f"local:{tiny_model_dir}", "--threads", 1)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["n"] == 12 and set(summary["by_kind"]) == {"truncated", "off_topic", "refusal"}
    assert summary["accuracy"] == pytest.approx(
        (summary["by_kind"]["truncated"] + summary["by_kind"]["off_topic"] + summary["by_kind"]["refusal"]) / 3)
    assert "order-averaged" in result.stdout


def test_judge_without_outputs_says_what_it_needs():
    result = edge_moa("judge", "--judge", "local:nowhere")
    assert result.returncode == 1 and "--against" in result.stderr


def test_eval_against_an_existing_mesh_by_its_broker(tiny_model_dir, instructions, tmp_path):
    from edge_agent.local.mesh import LocalMesh

    root = f"test/{tmp_path.name[-10:]}/moa"
    with LocalMesh(2, engine={"model": str(tiny_model_dir), "threads": 1}, moa={"max_new_tokens": 4},
                   topic_root=root, workdir=tmp_path / "mesh") as mesh:
        result = edge_moa("eval", "--instructions", instructions, "--limit", 4, "--configs", "1,1", "--out",
                          tmp_path / "out", "--broker", f"{mesh.broker.host}:{mesh.broker.port}", "--topic-root",
                          root, "--device", "agent1,agent2", "--max-new-tokens", 4)
    assert result.returncode == 0, result.stderr[-3000:]
    stats = [json.loads(line) for line in (tmp_path / "out" / "mesh_M1_k1.stats.jsonl").read_text().splitlines()]
    assert len(stats) == 4 and {s["device"] for s in stats} == {"agent1", "agent2"}  # round-robin
    assert all(s["inferences"] == 3 and "output_tokens" not in s for s in stats)
    # a replication on the other instructions: --exclude the first run's outputs before --limit draws
    with LocalMesh(1, engine={"model": str(tiny_model_dir), "threads": 1}, moa={"max_new_tokens": 4},
                   topic_root=root, workdir=tmp_path / "mesh2") as mesh:
        again = edge_moa("eval", "--instructions", instructions, "--limit", 4, "--configs", "0,0", "--out",
                         tmp_path / "out2", "--broker", f"{mesh.broker.host}:{mesh.broker.port}", "--topic-root",
                         root, "--device", "agent1", "--exclude", tmp_path / "out" / "mesh_M1_k1.json",
                         "--max-new-tokens", 4)
    assert again.returncode == 0, again.stderr[-3000:]
    first = {r["instruction"] for r in json.loads((tmp_path / "out" / "mesh_M1_k1.json").read_text())}
    second = {r["instruction"] for r in json.loads((tmp_path / "out2" / "mesh_M0_k0.json").read_text())}
    assert len(second) == 4 and not first & second


def test_eval_refuses_an_exclude_file_it_cannot_read(instructions, tmp_path):
    result = edge_moa("eval", "--instructions", instructions, "--configs", "0,0", "--out", tmp_path / "out",
                      "--exclude", tmp_path / "missing.json")
    assert result.returncode == 1 and "--exclude" in result.stderr and "missing.json" in result.stderr
    assert "no such file" in result.stderr and "Errno" not in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_select_keeps_one_candidate_verbatim_per_instruction(tiny_model_dir, tmp_path):
    rows = [{"instruction": f"Question {i}?", "dataset": "d", "datasplit": "eval"} for i in range(3)]
    for n, text in enumerate(["first answer", "second, longer answer", "first answer"]):
        (tmp_path / f"s{n}.json").write_text(json.dumps([dict(r, output=f"{text} {i}", generator=f"s{n}")
                                                         for i, r in enumerate(rows)]))
    out = tmp_path / "best.json"
    result = edge_moa("judge", "--select", *(tmp_path / f"s{n}.json" for n in range(3)), "--out", out,
                      "--judge", f"local:{tiny_model_dir}", "--threads", 1)
    assert result.returncode == 0, result.stderr[-2000:]
    best = json.loads(out.read_text())
    assert [r["generator"] for r in best] == ["best"] * 3
    for i, row in enumerate(best):
        assert row["output"] in {f"first answer {i}", f"second, longer answer {i}"}
    picked = [json.loads(line)["picked"] for line in out.with_suffix(".stats.jsonl").read_text().splitlines()]
    assert len(picked) == 3 and set(picked) <= {0, 1}  # the third repeats the first: never judged


def test_select_by_the_pointwise_ranker_keeps_its_ratings_and_refuses_a_mixed_resume(tiny_model_dir, tmp_path):
    rows = [{"instruction": f"Question {i}?", "dataset": "d", "datasplit": "eval"} for i in range(2)]
    for n, text in enumerate(["short", "a much longer second answer"]):
        (tmp_path / f"s{n}.json").write_text(json.dumps([dict(r, output=f"{text} {i}", generator=f"s{n}")
                                                         for i, r in enumerate(rows)]))
    out = tmp_path / "best.json"
    files = [tmp_path / "s0.json", tmp_path / "s1.json"]
    result = edge_moa("judge", "--select", *files, "--out", out, "--ranker", "pointwise",
                      "--judge", f"local:{tiny_model_dir}", "--threads", 1)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.splitlines()[-1])["method"] == "pointwise"
    stats = [json.loads(line) for line in out.with_suffix(".stats.jsonl").read_text().splitlines()]
    best = {r["instruction"]: r["output"] for r in json.loads(out.read_text())}
    answers = [{r["instruction"]: r["output"] for r in json.loads(f.read_text())} for f in files]
    assert len(stats) == len(best) == 2
    for entry in stats:
        assert entry["method"] == "pointwise" and len(entry["scores"]) == 2
        assert all(1.0 <= x <= 9.0 for x in entry["scores"])
        # the pick is the first of the highest ratings, and its answer is copied verbatim
        assert entry["picked"] == entry["scores"].index(max(entry["scores"]))
        assert best[entry["instruction"]] == answers[entry["picked"]][entry["instruction"]]
    mixed = edge_moa("judge", "--select", *files, "--out", out, "--judge", f"local:{tiny_model_dir}",
                     "--threads", 1)
    assert mixed.returncode != 0 and "pointwise ranker" in mixed.stderr
