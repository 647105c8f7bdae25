"""The ranking prompts: AlpacaEval's pairwise template filled in, and a pointwise 1-9 rating; pure text, no I/O.

AlpacaEval's template itself is not shipped here: eval reads it from the pinned sdist (`eval/sdist.py`), an
agent from `moa.pairwise_template_file` or the copy eval extracted (`default_template_path`).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

LABEL_FIRST, LABEL_SECOND = "m", "M"  # AlpacaEval's model identifiers: m = output_1, M = output_2
PAIR_LABELS = (LABEL_FIRST, LABEL_SECOND)
DIGITS = tuple(str(d) for d in range(1, 10))  # the pointwise scale, one token each in common tokenizers
# the sdist member eval extracts; `default_template_path` is where it lands
CLF_TEMPLATE_MEMBER = ("alpaca_eval-0.6.6/src/alpaca_eval/evaluators_configs/alpaca_eval_clf_gpt4_turbo/"
                       "alpaca_eval_clf.txt")
_TURN = re.compile(r"<\|im_start\|>(system|user|assistant)\n(.*?)<\|im_end\|>", re.DOTALL)
_FIELD = re.compile(r"\{(instruction|output_1|output_2)\}")

# Ours, not AlpacaEval's (it has no pointwise judge): one digit, read from the next token's distribution.
POINTWISE_SYSTEM = "You are a careful, impartial judge of answers to user instructions."
POINTWISE_USER = (
    "Rate how well the response answers the instruction, on a scale from 1 to 9: 1 = wrong, off-topic or "
    "useless; 5 = partly right or incomplete; 9 = correct, helpful, complete and clear. Judge the content, not "
    "the length.\n\n## Instruction\n\n{instruction}\n\n## Response\n\n{output}\n\n"
    "Reply with a single digit from 1 to 9 and nothing else."
)

Turns = list[tuple[str, str]]


def default_template_path(cache_root: Path) -> Path:
    """Where `edge-moa eval` / `judge` extract AlpacaEval's pairwise template under the alpaca_eval cache."""
    return cache_root / "extracted" / CLF_TEMPLATE_MEMBER


def split_turns(filled: str) -> Turns:
    """The template is written in ChatML; each judge renders the turns with its own model's chat template."""
    turns = [(role, text.strip("\n")) for role, text in _TURN.findall(filled)]
    if not turns:
        raise ValueError("the judge template has no <|im_start|> turns")
    return turns


def pair_messages(instruction: str, output_1: str, output_2: str, *, template: str,
                  max_output_chars: int = 6000) -> Turns:
    """The judge's chat for one order of one pair. Fields are filled in one pass, so an output that itself
    contains `{output_2}` is left as it is. Outputs longer than `max_output_chars` are cut (a small judge's
    context is finite; AlpacaEval itself does not cut)."""
    values = {"instruction": instruction, "output_1": output_1[:max_output_chars],
              "output_2": output_2[:max_output_chars]}
    return split_turns(_FIELD.sub(lambda m: values[m.group(1)], template))


def pointwise_messages(instruction: str, output: str, *, max_output_chars: int = 6000) -> Turns:
    user = POINTWISE_USER.replace("{output}", output[:max_output_chars]).replace("{instruction}", instruction, 1)
    return [("system", POINTWISE_SYSTEM), ("user", user)]


def p_first(logprobs: dict[str, float]) -> float | None:
    """P(m) / (P(m) + P(M)), AlpacaEval's weighted judge; None when neither label has any probability."""
    first, second = logprobs[LABEL_FIRST], logprobs[LABEL_SECOND]
    if first == -math.inf and second == -math.inf:
        return None
    top = max(first, second)
    return math.exp(first - top) / (math.exp(first - top) + math.exp(second - top))


def expected_digit(logprobs: dict[str, float]) -> float | None:
    """The expected rating over the nine digits, their probabilities renormalised: in [1, 9]; None if unseen."""
    values = [logprobs[d] for d in DIGITS]
    top = max(values)
    if top == -math.inf:
        return None
    weights = [math.exp(v - top) for v in values]
    return sum(w * int(d) for w, d in zip(weights, DIGITS, strict=True)) / sum(weights)
