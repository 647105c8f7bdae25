"""The select rankers without a model: pointwise expected ratings, the pairwise knockout in both orders, ties."""

import math
from dataclasses import dataclass

import pytest

from edge_agent.config import MoaSection
from edge_agent.ranking.prompts import DIGITS, expected_digit, p_first, pair_messages, pointwise_messages
from edge_agent.ranking.select import RANKERS, first_best, knockout, rank

TEMPLATE = ("<|im_start|>system\nYou judge.\n<|im_end|>\n<|im_start|>user\nQ: {instruction}\nm: {output_1}\n"
            "M: {output_2}\nWhich?\n<|im_end|>")


@dataclass(frozen=True)
class Scores:
    logprobs: dict
    prompt_tokens: int = 10


def digits_scorer(ratings: dict[str, int]):
    """Puts all probability on the digit given for the answer in the prompt."""
    def score(turns, labels):
        assert labels == DIGITS
        text = turns[-1][1]
        rating = next(r for answer, r in ratings.items() if f"## Response\n\n{answer}\n" in text)
        return Scores({d: (0.0 if int(d) == rating else -math.inf) for d in labels})
    return score


def quality_scorer(quality: dict[str, float], second_bias: float = 0.0):
    """P(output_1 better) from the two answers' qualities, plus a pull towards the second position."""
    def score(turns, labels):
        text = turns[-1][1]
        one = text.split("\nm: ", 1)[1].split("\nM: ", 1)[0]
        two = text.split("\nM: ", 1)[1].split("\nWhich?", 1)[0]
        p = 1 / (1 + math.exp(quality[two] - quality[one] + second_bias))
        return Scores({"m": math.log(p), "M": math.log(1 - p)}, prompt_tokens=len(text))
    return score


def test_expected_digit_is_a_probability_weighted_rating():
    assert expected_digit({d: (0.0 if d == "7" else -math.inf) for d in DIGITS}) == 7.0
    even = {d: math.log(1 / 9) for d in DIGITS}
    assert expected_digit(even) == pytest.approx(5.0)
    assert expected_digit({d: -math.inf for d in DIGITS}) is None
    assert p_first({"m": math.log(0.2), "M": math.log(0.6)}) == pytest.approx(0.25)


def test_pointwise_picks_the_best_rating_and_ties_go_to_the_earliest():
    ranking = rank(digits_scorer({"a": 3, "b": 8, "c": 8}), "pointwise", "q", ["a", "b", "c"])
    assert ranking.picked == 1 and ranking.scores == (3.0, 8.0, 8.0) and ranking.prompts == 3
    assert ranking.prompt_tokens == 30
    assert rank(digits_scorer({"a": 5, "b": 5}), "pointwise", "q", ["a", "b"]).picked == 0


def test_pairwise_knockout_asks_both_orders_and_a_pure_position_bias_is_a_tie():
    biased = quality_scorer({"a": 0.0, "b": 0.0, "c": 0.0}, second_bias=3.0)
    ranking = rank(biased, "pairwise", "q", ["a", "b", "c"], template=TEMPLATE)
    assert ranking.picked == 0 and ranking.prompts == 4  # two matches, both orders each
    assert ranking.scores == pytest.approx((0.5, 0.5, 0.5))
    better = quality_scorer({"a": 0.0, "b": 2.0, "c": 1.0}, second_bias=3.0)
    ranking = rank(better, "pairwise", "q", ["a", "b", "c"], template=TEMPLATE)
    assert ranking.picked == 1 and ranking.scores[1] > 0.5 > ranking.scores[0]


def test_knockout_skips_an_identical_answer_and_first_best_keeps_the_earliest():
    calls = []
    assert knockout(["x", "x", "y"], lambda a, b: calls.append((a, b)) or 0.4) == (2, [[0.4], [], [0.6]])
    assert calls == [(0, 2)]
    assert first_best([1.0, 3.0, 3.0, 2.0]) == 1


def test_pairwise_without_a_template_and_unknown_rankers_are_errors():
    with pytest.raises(ValueError, match="template"):
        rank(quality_scorer({}), "pairwise", "q", ["a", "b"])
    with pytest.raises(ValueError, match="unknown ranker"):
        rank(quality_scorer({}), "listwise", "q", ["a", "b"])


def test_prompts_fill_in_one_pass_and_cut_long_outputs():
    turns = pair_messages("say {output_2}", "I am {output_1}", "second", template=TEMPLATE)
    assert turns[1] == ("user", "Q: say {output_2}\nm: I am {output_1}\nM: second\nWhich?")
    point = pointwise_messages("say {output}", "x" * 50, max_output_chars=5)
    assert point[1][1].count("x") == 5 and "say {output}" in point[1][1]


def test_the_config_and_the_rankers_agree():
    assert set(MoaSection.model_fields["select_ranker"].annotation.__args__) == set(RANKERS)
