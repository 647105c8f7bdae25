"""AlpacaEval's pairwise judge prompt (`alpaca_eval_clf.txt`, from the sdist) filled in and split into chat turns.

The filling itself is shared with the agent's `select` ranker (`edge_agent/ranking/prompts.py`)."""

from __future__ import annotations

from functools import lru_cache

from ..ranking import prompts as shared
from ..ranking.prompts import LABEL_FIRST, LABEL_SECOND, split_turns
from . import sdist

__all__ = ["LABEL_FIRST", "LABEL_SECOND", "clf_template", "pair_messages", "split_turns"]


@lru_cache(maxsize=1)
def clf_template() -> str:
    return sdist.read_member(sdist.CLF_TEMPLATE_MEMBER).decode("utf-8")


def pair_messages(instruction: str, output_1: str, output_2: str, *, max_output_chars: int = 6000,
                  template: str | None = None) -> list[tuple[str, str]]:
    """As `ranking.prompts.pair_messages`, with AlpacaEval's own template unless another is given."""
    return shared.pair_messages(instruction, output_1, output_2, template=template or clf_template(),
                                max_output_chars=max_output_chars)
