"""The select step's ranking as a score job for the inference worker: the proposals ranked by this agent's model
(ranking/select.py over `engine.score_labels`), timed on the inference thread; and where its template comes from."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from ..artifact.store import models_root
from ..config import MoaSection
from ..engine import ChatMessage
from ..ranking.prompts import default_template_path
from ..ranking.select import Ranking, rank
from .moa import RunRank, cap_reference

log = logging.getLogger(__name__)
RANKER_OUTPUT_CHARS = 6000  # the ranker's own bound on an answer when the request sets no reference cap


@dataclass(frozen=True)
class TimedRanking:
    ranking: Ranking
    seconds: float  # on the inference thread: the select step's inference_s


def pairwise_template(moa: MoaSection) -> str | None:
    """AlpacaEval's pairwise template from `moa.pairwise_template_file`, else from where eval extracts it
    (`eval/sdist.py`: ~/.cache/edge-moa/alpaca_eval); None when neither can be read."""
    path = moa.pairwise_template_file or default_template_path(models_root().parent / "alpaca_eval")
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        if moa.pairwise_template_file is not None or moa.select_ranker == "pairwise":
            log.warning("no pairwise judge template (%s: %s): select_ranker = pairwise is refused", path,
                        exc.strerror)
        return None


def rank_job(action: RunRank, template: str | None):
    """What the score job runs on the inference thread: `run(engine) -> TimedRanking`."""
    cap = action.max_chars or RANKER_OUTPUT_CHARS
    answers = [cap_reference(answer, cap) for answer in action.answers]

    def run(engine) -> TimedRanking:
        started = time.perf_counter()

        def score(turns, labels):
            return engine.score_labels(tuple(ChatMessage(role, text) for role, text in turns), labels)

        ranking = rank(score, action.ranker, action.instruction, answers, template=template, max_output_chars=cap)
        return TimedRanking(ranking, time.perf_counter() - started)

    return run


def ranking_charge_tokens(action: RunRank) -> int:
    """A generous estimate of the longest ranking prompt (two answers, the instruction, the template), for the
    queue's memory charge before anything is tokenized: about one token per 2 characters."""
    cap = action.max_chars or RANKER_OUTPUT_CHARS
    longest = sorted((min(len(a), cap) for a in action.answers), reverse=True)[:2]
    return (sum(longest) + len(action.instruction) + 2000) // 2
