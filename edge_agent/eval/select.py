"""Best-of-n by a judge, offline: per instruction, the pick of the agent's `select` rankers over n answers files
(`pairwise`: a knockout, each pair in both orders; `pointwise`: each answer rated 1-9 alone). What
`moa.aggregation = select` gains, measured on answers already made, without running a mesh again."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from ..ranking.select import RANKERS, knockout, rank_pointwise
from .outputs import read_outputs, read_stats
from .progress import Progress
from .scorer import Scorer
from .verdicts import Pair, judge_pair

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Scores:
    logprobs: dict[str, float]
    prompt_tokens: int = 0  # a Scorer does not count them


def select_best(scorer: Scorer, candidates: list[Path], out: Path, *, ranker: str = "pairwise",
                max_output_chars: int = 6000) -> int:
    """Writes `out` (AlpacaEval format, generator = out's stem) and `out.stats.jsonl` (which candidate won, the
    candidates' summed latency and board seconds, the ranker's seconds). Resumable: instructions already in
    the stats file are kept. Returns how many instructions were selected."""
    if ranker not in RANKERS:
        raise ValueError(f"unknown ranker {ranker!r} (known: {', '.join(RANKERS)})")
    files = [{r["instruction"]: r for r in read_outputs(path)} for path in candidates]
    stats = [read_stats(path) for path in candidates]
    common = [i for i in files[0] if all(i in f for f in files[1:])]
    stats_path = out.with_suffix(".stats.jsonl")
    done = {}
    if stats_path.is_file():
        for line in stats_path.read_text(encoding="utf-8").splitlines():
            entry = json.loads(line)
            if entry.get("method", "pairwise") != ranker:  # one file, one ranker: a resume must not mix them
                raise ValueError(f"{stats_path} holds picks by the {entry.get('method', 'pairwise')} ranker, "
                                 f"not {ranker}: choose another --out")
            done[entry["instruction"]] = entry
    rows: dict[str, dict] = {}
    progress = Progress(out.stem, len(common), already=sum(i in done for i in common))
    try:
        for instruction in common:
            if instruction in done:
                rows[instruction] = dict(files[done[instruction]["picked"]][instruction], generator=out.stem)
                continue
            outputs = [f[instruction]["output"] for f in files]
            ranker_s = 0.0

            def preference(a: int, b: int, outputs=outputs, instruction=instruction) -> float:
                nonlocal ranker_s
                verdict = judge_pair(scorer, Pair(instruction, outputs[a], outputs[b]),
                                     max_output_chars=max_output_chars)
                ranker_s += verdict["seconds"]
                return verdict["preference"]

            scores = None
            if ranker == "pointwise":
                started = time.perf_counter()
                ranking = rank_pointwise(lambda turns, labels: _Scores(scorer.label_logprobs(turns, labels)),
                                         instruction, outputs, max_output_chars=max_output_chars)
                best, scores = ranking.picked, [round(x, 4) for x in ranking.scores]
                ranker_s = time.perf_counter() - started
            else:
                best, _ = knockout(outputs, preference)  # the agent's `select` pairwise ranker plays the same
            entry = {"instruction": instruction, "picked": best, "ranker_s": round(ranker_s, 3),
                     "ranker": scorer.name, "method": ranker}
            if scores is not None:
                entry["scores"] = scores
            for key, combine in (("latency_s", max), ("board_s", sum), ("inferences", sum)):
                values = [s[instruction].get(key) for s in stats if instruction in s]
                if len(values) == len(files) and all(isinstance(v, (int, float)) for v in values):
                    # candidates as proposals asked in parallel on n boards: wall time is the slowest one's
                    entry[key] = round(combine(values), 3)
            with open(stats_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
            rows[instruction] = dict(files[best][instruction], generator=out.stem)
            _write(out, [rows[i] for i in common if i in rows])
            progress.step()
    finally:
        progress.close()
    _write(out, [rows[i] for i in common if i in rows])
    return len(rows)


def _write(out: Path, rows: list[dict]) -> None:
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rows, indent=1, ensure_ascii=False), encoding="utf-8")
    tmp.replace(out)
