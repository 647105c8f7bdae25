"""Which of n answers is best, by a scorer's label probabilities: pointwise ratings or a pairwise knockout.

Pure over a `score(turns, labels)` callable, so the agent's inference thread (`engine.score_labels`) and the
offline judges share it. Ties always go to the earlier answer (in the agent: its own proposal).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from .prompts import DIGITS, PAIR_LABELS, Turns, expected_digit, p_first, pair_messages, pointwise_messages

RANKERS = ("pointwise", "pairwise")
NEUTRAL_DIGIT = 5.0  # a rating the scorer gave no digit any probability: the middle of the scale


class LabelScores(Protocol):
    logprobs: dict[str, float]
    prompt_tokens: int


Score = Callable[[Turns, tuple[str, ...]], LabelScores]


@dataclass(frozen=True)
class Ranking:
    picked: int  # index of the best answer
    scores: tuple[float, ...]  # pointwise: expected rating 1-9; pairwise: mean preference in its matches, 0-1
    prompt_tokens: int  # tokens the scorer read (every prompt, every order)
    prompts: int  # how many prompts were scored (prefills)


def rank(score: Score, ranker: str, instruction: str, answers: Sequence[str], *, template: str | None = None,
         max_output_chars: int = 6000) -> Ranking:
    if ranker == "pointwise":
        return rank_pointwise(score, instruction, answers, max_output_chars=max_output_chars)
    if ranker == "pairwise":
        if template is None:
            raise ValueError("the pairwise ranker needs AlpacaEval's judge template")
        return rank_pairwise(score, instruction, answers, template=template, max_output_chars=max_output_chars)
    raise ValueError(f"unknown ranker {ranker!r} (known: {', '.join(RANKERS)})")


def rank_pointwise(score: Score, instruction: str, answers: Sequence[str], *, max_output_chars: int = 6000
                   ) -> Ranking:
    """Each answer rated alone: the expected digit under the scorer's next-token distribution."""
    scores, tokens = [], 0
    for answer in answers:
        result = score(pointwise_messages(instruction, answer, max_output_chars=max_output_chars), DIGITS)
        tokens += result.prompt_tokens
        rating = expected_digit(result.logprobs)
        scores.append(NEUTRAL_DIGIT if rating is None else rating)
    return Ranking(picked=first_best(scores), scores=tuple(scores), prompt_tokens=tokens, prompts=len(answers))


def rank_pairwise(score: Score, instruction: str, answers: Sequence[str], *, template: str,
                  max_output_chars: int = 6000) -> Ranking:
    """A knockout: the best so far against each next answer, both orders (small judges favour one position;
    only the order average means anything); the challenger takes over only when strictly preferred."""
    tokens = prompts = 0

    def preference(a: int, b: int) -> float:
        nonlocal tokens, prompts
        orders = []
        for first, second in ((a, b), (b, a)):
            result = score(pair_messages(instruction, answers[first], answers[second], template=template,
                                         max_output_chars=max_output_chars), PAIR_LABELS)
            tokens, prompts = tokens + result.prompt_tokens, prompts + 1
            p = p_first(result.logprobs)
            orders.append(0.5 if p is None else p)
        return (orders[0] + 1.0 - orders[1]) / 2  # P(a better than b), averaged over both orders

    picked, played = knockout([answer for answer in answers], preference)
    scores = tuple(sum(p) / len(p) if p else 0.5 for p in played)
    return Ranking(picked=picked, scores=scores, prompt_tokens=tokens, prompts=prompts)


def knockout(answers: Sequence[str], preference: Callable[[int, int], float]) -> tuple[int, list[list[float]]]:
    """The winner of best-vs-next matches and each answer's preferences in the matches it played. An answer
    identical to the best so far is not played (it cannot win)."""
    best = 0
    played: list[list[float]] = [[] for _ in answers]
    for challenger in range(1, len(answers)):
        if answers[challenger] == answers[best]:
            continue
        p = preference(best, challenger)
        played[best].append(p)
        played[challenger].append(1.0 - p)
        if p < 0.5:
            best = challenger
    return best, played


def first_best(scores: Sequence[float]) -> int:
    """The index of the highest score, the earliest among equals."""
    best = 0
    for index, value in enumerate(scores):
        if value > scores[best]:
            best = index
    return best
