"""AlpacaEval's pairwise judge prompt (`alpaca_eval_clf.txt`, from the sdist) filled in and split into chat turns."""

from __future__ import annotations

import re
from functools import lru_cache

from . import sdist

LABEL_FIRST, LABEL_SECOND = "m", "M"  # the template's model identifiers: m = output_1, M = output_2
_TURN = re.compile(r"<\|im_start\|>(system|user|assistant)\n(.*?)<\|im_end\|>", re.DOTALL)
_FIELD = re.compile(r"\{(instruction|output_1|output_2)\}")


@lru_cache(maxsize=1)
def clf_template() -> str:
    return sdist.read_member(sdist.CLF_TEMPLATE_MEMBER).decode("utf-8")


def split_turns(filled: str) -> list[tuple[str, str]]:
    """The template is written in ChatML; each judge renders the turns with its own model's chat template."""
    turns = [(role, text.strip("\n")) for role, text in _TURN.findall(filled)]
    if not turns:
        raise ValueError("the judge template has no <|im_start|> turns")
    return turns


def pair_messages(instruction: str, output_1: str, output_2: str, *, max_output_chars: int = 6000,
                  template: str | None = None) -> list[tuple[str, str]]:
    """The judge's chat for one order of one pair. Fields are filled in one pass, so an output that itself
    contains `{output_2}` is left as it is. Outputs longer than `max_output_chars` are cut (a small judge's
    context is finite; AlpacaEval itself does not cut)."""
    values = {"instruction": instruction, "output_1": output_1[:max_output_chars],
              "output_2": output_2[:max_output_chars]}
    return split_turns(_FIELD.sub(lambda m: values[m.group(1)], template or clf_template()))
