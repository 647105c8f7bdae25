"""How far a judge can be trusted: constructed pairs whose better side is known (reference answer vs the same
cut to its first ten words, vs another instruction's answer, vs a refusal), judged in both orders."""

from __future__ import annotations

import numpy as np

from .instructions import Instruction, stratified_subset
from .verdicts import Pair

REFUSAL = "I'm sorry, but I can't help with that request."
KINDS = ("truncated", "off_topic", "refusal")


def sanity_pairs(items: list[Instruction], n: int, seed: int = 0) -> list[Pair]:
    """3 pairs for each of `n` instructions (stratified by dataset) whose reference has at least 30 words; the
    good side is always A. The off-topic answer is the reference of the next chosen instruction (another topic)."""
    usable = [i for i in items if i.reference and len(i.reference.split()) >= 30]
    chosen = stratified_subset(usable, n, seed)
    pairs = []
    for j, item in enumerate(chosen):
        other = chosen[(j + 1) % len(chosen)]
        if other.index == item.index:
            continue
        good = item.reference or ""
        pairs += [Pair(item.instruction, good, " ".join(good.split()[:10]), "truncated"),
                  Pair(item.instruction, good, other.reference or "", "off_topic"),
                  Pair(item.instruction, good, REFUSAL, "refusal")]
    return pairs


def sanity_summary(records: list[dict]) -> dict:
    """Accuracy order-averaged (the good side's mean preference > 0.5), in each single order, and the flip rate."""
    pref = np.array([r["preference"] for r in records], dtype=float)
    first = np.array([r["p_a_first"] for r in records], dtype=float)
    second = np.array([r["p_a_second"] for r in records], dtype=float)
    summary = {
        "n": len(records),
        "accuracy": round(float((pref > 0.5).mean()), 4),
        "accuracy_good_first": round(float((first > 0.5).mean()), 4),
        "accuracy_good_second": round(float((second > 0.5).mean()), 4),
        "flip_rate": round(float(np.mean([bool(r["flip"]) for r in records])), 4),
        "by_kind": {kind: round(float(np.mean([r["preference"] > 0.5 for r in records if r["kind"] == kind])), 4)
                    for kind in KINDS if any(r["kind"] == kind for r in records)},
        "judge": records[0]["judge"] if records else None,
    }
    return summary
