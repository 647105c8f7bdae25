"""The offline llama.cpp judge on the real Qwen2.5-Coder-0.5B GGUF (fetched once, 491 MB). Needs the `eval`
extra (llama-cpp-python): skipped only when it is not installed."""

import pytest

pytest.importorskip("llama_cpp", reason="the eval extra (llama-cpp-python) is not installed")

from edge_agent.eval.judge_models import judge_gguf
from edge_agent.eval.judge_prompt import pair_messages
from edge_agent.eval.scorer_llama import LlamaScorer
from edge_agent.eval.verdicts import Pair, judge_pair

pytestmark = pytest.mark.slow

GOOD = ("Paris is the capital of France. It lies on the Seine in the north of the country and has been the seat "
        "of the French government for most of the last thousand years.")


@pytest.fixture(scope="module")
def scorer():
    scorer = LlamaScorer(judge_gguf("qwen05"), threads=2, context_tokens=2048)
    yield scorer
    scorer.close()


def test_cached_prefix_gives_the_same_probabilities_as_a_fresh_prompt(scorer):
    turns_ab = pair_messages("What is the capital of France?", GOOD, "I cannot help with that.")
    turns_ba = pair_messages("What is the capital of France?", "I cannot help with that.", GOOD)
    first = scorer.label_logprobs(turns_ab, ("m", "M"))
    scorer.label_logprobs(turns_ba, ("m", "M"))  # shares the system prompt and instruction: a cache hit
    again = scorer.label_logprobs(turns_ab, ("m", "M"))
    assert again == pytest.approx(first, abs=1e-3)
    assert max(first.values()) > -3  # the labels are what the model expects to say next


def test_order_averaged_verdicts_prefer_the_real_answer(scorer):
    pairs = [Pair("What is the capital of France?", GOOD, "I'm sorry, but I can't help with that request.", "refusal"),
             Pair("What is the capital of France?", GOOD, " ".join(GOOD.split()[:10]), "truncated")]
    verdicts = [judge_pair(scorer, pair) for pair in pairs]
    assert all(0 < v["p_a_first"] < 1 and 0 < v["p_a_second"] < 1 for v in verdicts)
    assert sum(v["verdict"] for v in verdicts) >= 1
