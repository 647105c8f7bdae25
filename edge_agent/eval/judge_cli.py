"""`edge-moa judge`: pairwise verdicts of one outputs file against another (or the references), or `--sanity`."""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

from ..errors import ConfigError
from ..ranking.select import RANKERS


def register_judge(sub) -> None:
    judge = sub.add_parser("judge", help="judge outputs A against B (or the references) in both orders; "
                                         "last line: the summary as one JSON object")
    judge.add_argument("a", nargs="?", type=Path, help="outputs to judge (AlpacaEval format)")
    judge.add_argument("--against", help="a baseline outputs file, or `reference` (the instructions' own outputs)")
    judge.add_argument("--judge", default="local",
                       help="local (Qwen2.5-Coder-1.5B by llama.cpp), local:qwen05, local:FILE.gguf, "
                            "local:MODEL (a built board model, our ONNX engine), or an OpenAI-compatible URL")
    judge.add_argument("--judge-model", help="URL judges: the `model` field of the request")
    judge.add_argument("--top-logprobs", type=int, default=20, help="URL judges: how many to ask for (default 20)")
    judge.add_argument("--api-key-env", default="OPENAI_API_KEY", help="URL judges: env var holding the key")
    judge.add_argument("--sanity", action="store_true", help="the judge's accuracy on constructed pairs instead")
    judge.add_argument("--sanity-n", type=int, default=10, help="instructions for --sanity (3 pairs each)")
    judge.add_argument("--instructions", default="alpaca_eval", help="where `reference` and --sanity take answers")
    judge.add_argument("--limit", type=int, help="judge only N of the common instructions, drawn at random (--seed)")
    judge.add_argument("--seed", type=int, default=0)
    judge.add_argument("--verdicts", type=Path, help="verdicts JSONL (default: beside A; resumable)")
    judge.add_argument("--threads", type=int, default=2, help="local judges: inference threads")
    judge.add_argument("--context", type=int, default=4096, help="llama.cpp judges: context tokens")
    judge.add_argument("--max-output-chars", type=int, default=6000, help="cut longer outputs in the judge prompt")
    judge.add_argument("--json", action="store_true", help="print only the summary JSON")
    judge.add_argument("--no-new", action="store_true",
                       help="judge nothing: summarize the verdicts already in the file (a run going on or stopped)")
    judge.add_argument("--select", nargs="+", type=Path, metavar="OUTPUTS",
                       help="best-of-n instead: per instruction, a knockout of these files' answers by the judge")
    judge.add_argument("--out", type=Path, help="--select: where the selected outputs go")
    judge.add_argument("--ranker", choices=RANKERS, default="pairwise",
                       help="--select: a knockout of pairs in both orders (AlpacaEval's template), or each answer "
                            "rated 1-9 alone; the agent's `select_ranker`s")
    judge.add_argument("--compare", nargs=2, type=Path, metavar="VERDICTS",
                       help="judge nothing: two verdict files against one baseline, paired on their common "
                            "instructions (first - second, bootstrap CI)")
    judge.set_defaults(func=cmd_judge)


def cmd_judge(args: argparse.Namespace) -> int:
    from .instructions import load_instructions
    from .sanity import sanity_pairs, sanity_summary
    from .scorer import open_scorer
    from .summary import summarize
    from .verdicts import judge_pairs

    if args.select:
        return _cmd_select(args)
    if args.compare:
        return _cmd_compare(args)
    if not args.sanity and (args.a is None or not args.against):
        raise ConfigError([("judge", None, "give OUTPUTS.json --against B.json|reference, or --sanity")])
    if args.sanity:
        pairs = sanity_pairs(load_instructions(args.instructions), args.sanity_n, args.seed)
        path = args.verdicts
    else:
        pairs, b_name = _pairs(args)
        path = args.verdicts or args.a.with_name(f"{args.a.stem}.vs.{b_name}.{_slug(args.judge)}.verdicts.jsonl")
    scorer = None if args.no_new else open_scorer(
        args.judge, threads=args.threads, api_key_env=args.api_key_env, model=args.judge_model,
        context_tokens=args.context, top_logprobs=args.top_logprobs)
    try:
        records = judge_pairs(scorer, pairs, path, max_output_chars=args.max_output_chars,
                              title="sanity" if args.sanity else "judge")
    finally:
        if scorer is not None:
            scorer.close()
    if args.sanity:
        summary = sanity_summary(records)
        text = (f"judge {summary['judge']}: accuracy {summary['accuracy']:.1%} order-averaged on {summary['n']} "
                f"constructed pairs (good side first {summary['accuracy_good_first']:.1%}, second "
                f"{summary['accuracy_good_second']:.1%}), flip rate {summary['flip_rate']:.1%}; by kind "
                + ", ".join(f"{k} {v:.0%}" for k, v in summary["by_kind"].items()))
    else:
        summary = {"a": str(args.a), "b": args.against, "verdicts": str(path), **summarize(records, seed=args.seed),
                   **_costs(args, records)}
        lc = summary.get("lc_win_rate")
        text = (f"{args.a.stem} vs {b_name}: win rate {summary['win_rate']:.1%} [{summary['ci_low']:.1%}, "
                f"{summary['ci_high']:.1%}] on n={summary['n']} ({summary['wins']}W {summary['ties']}T "
                f"{summary['losses']}L), flip rate {summary['flip_rate']:.1%}, mean length "
                f"{summary['mean_len_a']:.0f} vs {summary['mean_len_b']:.0f} chars, length-controlled "
                + (f"{lc:.1%}" if lc is not None else "n/a") + f"; judge {summary['judge']}") if summary["n"] else (
            "no pairs judged")
    if not args.json:
        print(text)
    print(json.dumps(summary))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .summary import paired_difference
    from .verdicts import read_verdicts

    missing = [str(p) for p in args.compare if not p.is_file()]
    if missing:
        raise ConfigError([("--compare", missing, "no such file (a verdicts JSONL of `edge-moa judge`)")])
    first, second = (read_verdicts(path) for path in args.compare)
    try:
        paired = paired_difference(first, second, seed=args.seed)
    except ValueError as exc:
        raise ConfigError([("--compare", [str(p) for p in args.compare], str(exc))]) from None
    summary = {"first": str(args.compare[0]), "second": str(args.compare[1]), **paired}
    if summary["n"] == 0:
        raise ConfigError([("--compare", [str(p) for p in args.compare], "no instruction judged in both")])
    if not args.json:
        print(f"{args.compare[0].name} - {args.compare[1].name}: {summary['difference']:+.1%} "
              f"[{summary['ci_low']:+.1%}, {summary['ci_high']:+.1%}] on n={summary['n']} common instructions "
              f"({summary['win_rate_first']:.1%} vs {summary['win_rate_second']:.1%}; same verdict on "
              f"{summary['same_verdict']:.0%})")
    print(json.dumps(summary))
    return 0


def _cmd_select(args: argparse.Namespace) -> int:
    from .scorer import open_scorer
    from .select import select_best

    if len(args.select) < 2 or not args.out:
        raise ConfigError([("--select", [str(p) for p in args.select], "needs two or more files and --out")])
    missing = [str(p) for p in args.select if not p.is_file()]
    if missing:
        raise ConfigError([("--select", missing, "no such file (AlpacaEval-format outputs, e.g. from `eval`)")])
    scorer = open_scorer(args.judge, threads=args.threads, api_key_env=args.api_key_env, model=args.judge_model,
                         context_tokens=args.context, top_logprobs=args.top_logprobs)
    try:
        count = select_best(scorer, args.select, args.out, ranker=args.ranker,
                            max_output_chars=args.max_output_chars)
    except ValueError as exc:  # a malformed candidate file, or --out holding another ranker's picks
        raise ConfigError([("judge --select", [str(p) for p in args.select], str(exc))]) from None
    finally:
        scorer.close()
    print(json.dumps({"selected": count, "out": str(args.out), "ranker": scorer.name, "method": args.ranker}))
    return 0


def _pairs(args):
    from .outputs import read_outputs
    from .verdicts import Pair

    try:
        a_rows = read_outputs(args.a)
    except (OSError, ValueError) as exc:
        raise ConfigError([("judge A", str(args.a), str(exc))]) from None
    if args.against == "reference":
        from .instructions import load_instructions

        b_by = {i.instruction: i.reference for i in load_instructions(args.instructions) if i.reference is not None}
        b_name = "reference"
    else:
        try:
            b_by = {r["instruction"]: r["output"] for r in read_outputs(Path(args.against))}
        except (OSError, ValueError) as exc:
            raise ConfigError([("--against", args.against, str(exc))]) from None
        b_name = Path(args.against).stem
    pairs = [Pair(r["instruction"], r["output"], b_by[r["instruction"]]) for r in a_rows if r["instruction"] in b_by]
    missing = len(a_rows) - len(pairs)
    if missing:
        print(f"note: {missing} of A's instructions have no counterpart in {b_name}: not judged", file=sys.stderr)
    # judged in a seeded random order: a run stopped early (or --limit) has judged a random subset, not the first
    # datasets of the file (AlpacaEval's are in blocks)
    random.Random(args.seed).shuffle(pairs)
    return pairs[: args.limit] if args.limit else pairs, b_name


def _costs(args, records: list[dict]) -> dict:
    """Mean latency, board seconds, inferences and agents' queue per answer of A and B over the judged
    instructions, from the stats files `edge-moa eval` keeps beside its outputs (absent for files from elsewhere;
    the queue only in files of an eval that watched it)."""
    from .outputs import read_stats

    out = {}
    sides = [("a", args.a)] + ([("b", Path(args.against))] if args.against != "reference" else [])
    for side, path in sides:
        stats = read_stats(path)
        rows = [stats[r["instruction"]] for r in records if r["instruction"] in stats]
        if rows and len(rows) == len(records):
            for key in ("latency_s", "board_s", "inferences", "queue_length"):
                values = [row[key] for row in rows if isinstance(row.get(key), (int, float))]
                if values:
                    out[f"mean_{key}_{side}"] = round(sum(values) / len(values), 3)
    return out


def _slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.split("://")[-1])[:60]
