"""The OpenAI-compatible judge path against a real HTTP server (ours, serving the tiny model's log-probabilities)."""

import json
import subprocess
import sys

import pytest

from edge_agent.errors import TransportError
from edge_agent.eval.logprob_server import LogprobServer
from edge_agent.eval.scorer_http import HttpScorer
from edge_agent.eval.scorer_onnx import OnnxScorer
from edge_agent.eval.verdicts import Pair, judge_pair

pytestmark = pytest.mark.slow
TEMPLATE = ("<|im_start|>system\nPick the better answer.\n<|im_end|>\n<|im_start|>user\n{instruction}\n"
            "m: {output_1}\nM: {output_2}\n<|im_end|>")


@pytest.fixture(scope="module")
def scorer(tiny_model_dir):
    scorer = OnnxScorer(tiny_model_dir, threads=1)
    yield scorer
    scorer.close()


@pytest.fixture
def server(scorer, monkeypatch):
    monkeypatch.setenv("TEST_JUDGE_KEY", "s3cret")
    with LogprobServer(scorer, api_key="s3cret") as server:
        yield server


def test_http_judge_reads_the_same_probabilities_as_the_engine(scorer, server):
    vocab = 512  # the tiny model's: ask for every token, so both labels are always among the top ones
    http = HttpScorer(server.url, api_key_env="TEST_JUDGE_KEY", model="tiny", top_logprobs=vocab)
    pair = Pair("Name a colour.", "Blue is a colour.", "I like trains.")
    over_http = judge_pair(http, pair, template=TEMPLATE)
    direct = judge_pair(scorer, pair, template=TEMPLATE)
    for key in ("p_a_first", "p_a_second", "preference", "verdict", "flip"):
        assert over_http[key] == pytest.approx(direct[key], abs=1e-5), key
    assert over_http["judge"] == f"{server.url}/chat/completions#tiny"


def test_labels_missing_from_the_top_count_as_a_tie(scorer, server):
    http = HttpScorer(server.url, api_key_env="TEST_JUDGE_KEY", top_logprobs=1)
    turns = [("user", "anything")]
    top_token = scorer.top_logprobs(turns, 1)[0][0]
    got = http.label_logprobs(turns, (top_token, "\u2603never"))
    assert got[top_token] < 0 and got["\u2603never"] == float("-inf")


def test_a_wrong_key_is_an_error_with_the_status(server, monkeypatch):
    monkeypatch.setenv("TEST_JUDGE_KEY", "wrong")
    with pytest.raises(TransportError, match="HTTP 401"):
        HttpScorer(server.url, api_key_env="TEST_JUDGE_KEY").label_logprobs([("user", "x")], ("m", "M"))


def test_judge_cli_over_http(server, tmp_path):
    rows = [{"instruction": f"Question {i}?", "output": f"An answer {i} " * 12, "dataset": "d"} for i in range(4)]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "b.json").write_text(json.dumps([dict(r, output="short") for r in rows]))
    result = subprocess.run(
        [sys.executable, "-m", "edge_agent", "judge", str(tmp_path / "a.json"), "--against", str(tmp_path / "b.json"),
         "--judge", server.url, "--api-key-env", "TEST_JUDGE_KEY", "--top-logprobs", "512", "--json"],
        capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["n"] == 4 and summary["judge"].startswith(server.url)
