"""Batching benchmark: tasks/s of OnnxEngine.generate_batch at b = 1, 2, 4 (DESIGN.md sec. 4: b / alpha(b)).

    python tools/bench/batching.py [--model smollm2-135m-instruct] [--threads 1 2] [--batches 1 2 4]
                                   [--runs 3] [--new-tokens 64]

Each batch is the first b of four fixed chat prompts of similar length (46-53 tokens), every row greedy and
run to `--new-tokens` (EOS ignored, so each b does the same work per task). tasks/s = b / wall time of one
`generate_batch` call (prefill of every row included), median of `--runs` warm runs taken round robin over b, so
load from other processes hits every b alike; the ratio is against b = 1 at the same thread count, measured in the
same run (b = 1 takes the plain single-request loop, i.e. what `generate` does). The last line printed is one
JSON object: `throughput_ratio_b<b>` is the lower ratio over the thread counts run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from edge_agent.artifact.store import resolve_model_dir
from edge_agent.engine.base import ChatMessage, Generation, GenerationRequest
from edge_agent.errors import ConfigError

QUESTIONS = [
    "Explain in a few sentences why the sky is blue during the day and red at sunset, for a child.",
    "Describe in a few sentences how a small language model can answer questions on a Raspberry Pi.",
    "Summarise in a few sentences what an MQTT broker does and why edge devices like to use one.",
    "Give a short explanation of why batching several requests together can speed up inference.",
]


def measure(model_dir: Path, threads: int, batches: list[int], runs: int, new_tokens: int) -> list[dict]:
    from edge_agent.engine.onnx import OnnxEngine

    engine = OnnxEngine(model_dir, threads=threads, max_batch=max(batches))
    requests = [
        GenerationRequest(messages=(ChatMessage("user", q),), max_new_tokens=new_tokens, temperature=0)
        for q in QUESTIONS
    ]
    prompt_tokens = [engine.count_prompt_tokens(r.messages) for r in requests]
    batch_of = {b: [requests[i % len(requests)] for i in range(b)] for b in batches}
    for b in batches:  # warm-up: allocations for each batch shape
        engine.generate_batch(batch_of[b], stop_at_eos=False)
    walls: dict[int, list[float]] = {b: [] for b in batches}
    decode_ms: dict[int, list[float]] = {b: [] for b in batches}
    for _ in range(runs):
        for b in batches:
            started = time.perf_counter()
            results = engine.generate_batch(batch_of[b], stop_at_eos=False)
            walls[b].append(time.perf_counter() - started)
            assert all(isinstance(r, Generation) and r.new_tokens == new_tokens for r in results), results
            decode_ms[b].append(engine.last_timing.decode_s / (new_tokens - 1) * 1000)
    rows = []
    for b in batches:
        wall = statistics.median(walls[b])
        capacity = max(prompt_tokens[i % len(requests)] for i in range(b)) + new_tokens
        rows.append(
            {
                "threads": threads,
                "b": b,
                "wall_s": wall,
                "tasks_per_s": b / wall,
                "decode_ms_per_step": statistics.median(decode_ms[b]),
                "kv_mb": b * capacity * engine.kv_bytes_per_token / 2**20,
            }
        )
    engine.close()
    base = next((r["tasks_per_s"] for r in rows if r["b"] == 1), None)
    for row in rows:
        row["ratio"] = row["tasks_per_s"] / base if base else None
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args(argv)
    try:
        model_dir = resolve_model_dir(args.model)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    load_before = os.getloadavg()[0]
    rows = [
        r
        for threads in args.threads
        for r in measure(model_dir, threads, args.batches, args.runs, args.new_tokens)
    ]
    print(f"{args.model}, {args.new_tokens} greedy new tokens per task, median of {args.runs} warm runs")
    print("| threads | b | batch wall s | tasks/s | vs b=1 | decode ms/step | KV MB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
        print(
            f"| {r['threads']} | {r['b']} | {r['wall_s']:.2f} | {r['tasks_per_s']:.3f} | {ratio} "
            f"| {r['decode_ms_per_step']:.1f} | {r['kv_mb']:.1f} |"
        )
    summary: dict[str, object] = {}
    for b in args.batches:
        ratios = [r["ratio"] for r in rows if r["b"] == b and r["ratio"] is not None]
        if b != 1 and ratios:
            summary[f"throughput_ratio_b{b}"] = round(min(ratios), 3)
    summary["tasks_per_s"] = {f"t{r['threads']}_b{r['b']}": round(r["tasks_per_s"], 4) for r in rows}
    summary.update(
        model=args.model,
        new_tokens=args.new_tokens,
        runs=args.runs,
        load_average_1min=[round(load_before, 2), round(os.getloadavg()[0], 2)],
    )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
