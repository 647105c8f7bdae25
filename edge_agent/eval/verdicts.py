"""Pairwise verdicts: each pair judged in both orders, one JSONL line per pair, resumable (a rerun skips them)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from ..ranking.prompts import p_first
from .judge_prompt import LABEL_FIRST, LABEL_SECOND, pair_messages
from .progress import Progress
from .scorer import Scorer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pair:
    instruction: str
    a: str
    b: str
    kind: str = "pair"  # sanity pairs: "truncated" | "off_topic" | "refusal"


def p_first_better(scorer: Scorer, instruction: str, output_1: str, output_2: str, *,
                   max_output_chars: int = 6000, template: str | None = None) -> float:
    """P(m) / (P(m) + P(M)) from the next-token distribution: how sure the judge is that output_1 is better
    (AlpacaEval's weighted judge, `logprob_parser` with is_binarize false). 0.5 when neither label is seen."""
    logprobs = scorer.label_logprobs(pair_messages(instruction, output_1, output_2,
                                                   max_output_chars=max_output_chars, template=template),
                                       (LABEL_FIRST, LABEL_SECOND))
    p = p_first(logprobs)
    if p is None:
        log.warning("judge %s gave neither label any probability: counted as a tie", scorer.name)
        return 0.5
    return p


def judge_pair(scorer: Scorer, pair: Pair, *, max_output_chars: int = 6000, template: str | None = None) -> dict:
    """Both orders; `preference` (of A over B) is their mean, `verdict` 1 / 0.5 / 0 from it, `flip` whether the
    two orders alone disagree."""
    started = time.perf_counter()
    a_first = p_first_better(scorer, pair.instruction, pair.a, pair.b, max_output_chars=max_output_chars,
                             template=template)
    a_second = 1.0 - p_first_better(scorer, pair.instruction, pair.b, pair.a, max_output_chars=max_output_chars,
                                    template=template)
    preference = (a_first + a_second) / 2
    verdict = 1.0 if preference > 0.5 else 0.0 if preference < 0.5 else 0.5
    return {"instruction": pair.instruction, "kind": pair.kind, "p_a_first": round(a_first, 6),
            "p_a_second": round(a_second, 6), "preference": round(preference, 6), "verdict": verdict,
            "flip": (a_first > 0.5) != (a_second > 0.5), "len_a": len(pair.a), "len_b": len(pair.b),
            "judge": scorer.name, "seconds": round(time.perf_counter() - started, 3)}


def read_verdicts(path: Path | None) -> list[dict]:
    """The verdicts in a JSONL file (none if absent), in order; a damaged line (a run killed mid-write) is
    skipped with a warning."""
    records = []
    if path is not None and path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
                (record["instruction"], record["kind"], record["len_a"], record["len_b"], record["verdict"])
                records.append(record)
            except (ValueError, KeyError, TypeError):
                log.warning("%s: skipping a damaged line %r", path, line[:80])
    return records


def judge_pairs(scorer: Scorer | None, pairs: list[Pair], path: Path | None, *, max_output_chars: int = 6000,
                title: str = "judge") -> list[dict]:
    """Verdicts for every pair, in order; those already in `path` (same instruction, kind and texts' lengths)
    are read back instead of judged again, and new ones are appended as they come. With no scorer: only the
    verdicts already in `path` (a summary of a run still going or stopped)."""
    done = {(r["instruction"], r["kind"], r["len_a"], r["len_b"]): r for r in read_verdicts(path)}
    key = lambda p: (p.instruction, p.kind, len(p.a), len(p.b))
    progress = Progress(title, len(pairs), already=sum(key(p) in done for p in pairs))
    out = []
    try:
        for pair in pairs:
            record = done.get(key(pair))
            if record is None and scorer is None:
                continue
            if record is None:
                record = judge_pair(scorer, pair, max_output_chars=max_output_chars)
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with open(path, "a", encoding="utf-8") as handle:
                        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                progress.step()
            out.append(record)
    finally:
        progress.close()
    return out
