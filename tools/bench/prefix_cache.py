"""Prefix cache benchmark: what the kept KV of shared prompt starts saves on the mesh's own prompts.

    python tools/bench/prefix_cache.py [--model smollm2-135m-instruct] [--threads 1] [--prompts 24]
        [--answers A.json B.json C.json] [--new-tokens 1]

The prompts an agent really runs, built from three answers to each of `--prompts` AlpacaEval instructions (three
output files of the same instructions, e.g. an M=0 run and two more samples): a layer-1 proposal (the instruction
alone), the final synthesis (the synthesis system prompt quoting the three answers) and the `select` ranking
(each answer rated alone, pointwise). Two engines of the same model, with the cache and without
(`prefix_cache_bytes=0`), serve each prompt in turn, alternating which goes first, one thread each, same run.
Times are the prefill (to the first token) of generations and the whole prefill of rankings; the cache's first
two prompts of a kind only fill it (kept on second sight) and are left out of the figures. The last line printed
is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from edge_agent.agent.moa import proposal_messages
from edge_agent.artifact.store import resolve_model_dir
from edge_agent.config import SYNTHESIS_SYSTEM_PROMPT
from edge_agent.engine.base import ChatMessage, GenerationRequest
from edge_agent.engine.machine import cpu_features
from edge_agent.engine.onnx import OnnxEngine
from edge_agent.eval.outputs import read_outputs
from edge_agent.ranking.prompts import pointwise_messages

RUNS = Path(__file__).resolve().parents[2] / "docs" / "quality" / "runs-2026-12-03"
ANSWERS = [RUNS / f"qwen2.5-coder-0.5b-instruct_M0_k0{suffix}.json" for suffix in ("", "_sample2", "_sample3")]
WARM = 2  # prompts of each kind that only fill the cache


def prompts_by_kind(files: list[Path], count: int) -> dict[str, list[tuple[ChatMessage, ...]]]:
    by_file = [{row["instruction"]: row["output"] for row in read_outputs(path)} for path in files]
    common = [i for i in by_file[0] if all(i in other for other in by_file[1:])][:count]
    if len(common) < WARM + 1:
        raise SystemExit(f"only {len(common)} instructions are common to {', '.join(map(str, files))}")

    def chat(wire) -> tuple[ChatMessage, ...]:
        return tuple(ChatMessage(m.role, m.content) for m in wire)

    kinds: dict[str, list[tuple[ChatMessage, ...]]] = {"proposal": [], "synthesis": [], "ranking": []}
    for instruction in common:
        answers = [answers_of[instruction] for answers_of in by_file]
        kinds["proposal"].append(chat(proposal_messages(instruction, SYNTHESIS_SYSTEM_PROMPT, [])))
        kinds["synthesis"].append(chat(proposal_messages(instruction, SYNTHESIS_SYSTEM_PROMPT, answers)))
        for answer in answers:
            kinds["ranking"].append(tuple(ChatMessage(role, content)
                                          for role, content in pointwise_messages(instruction, answer)))
    return kinds


def prefill_seconds(engine: OnnxEngine, kind: str, messages: tuple[ChatMessage, ...], new_tokens: int
                    ) -> tuple[float, int, int]:
    """(seconds, prompt tokens, tokens taken from the cache) of one prompt's prefill."""
    if kind == "ranking":
        ids = engine.prompt_ids(messages)
        reused = engine.prefixes.stats.tokens_reused if engine.prefixes else 0
        started = time.perf_counter()
        engine.last_logits(ids)
        seconds = time.perf_counter() - started
        return seconds, len(ids), (engine.prefixes.stats.tokens_reused - reused) if engine.prefixes else 0
    result = engine.generate(GenerationRequest(messages=messages, max_new_tokens=new_tokens, temperature=0))
    return engine.last_timing.prefill_s, result.prompt_tokens, result.cached_tokens


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=24, help="instructions (3 ranking prompts each)")
    parser.add_argument("--answers", nargs=3, type=Path, default=ANSWERS, metavar="OUTPUTS")
    parser.add_argument("--new-tokens", type=int, default=1)
    args = parser.parse_args(argv)

    model_dir = resolve_model_dir(args.model)
    engines = {"cached": OnnxEngine(model_dir, threads=args.threads, max_batch=1),
               "uncached": OnnxEngine(model_dir, threads=args.threads, max_batch=1, prefix_cache_bytes=0)}
    for engine in engines.values():
        engine.warm_up()
    kinds = prompts_by_kind(args.answers, args.prompts)
    report: dict = {"model": args.model, "threads": args.threads, "cpu": platform.processor() or platform.machine(),
                    "cpu_features": list(cpu_features()), "prompts": args.prompts}
    for kind, prompts in kinds.items():
        times: dict[str, list[float]] = {"cached": [], "uncached": []}
        tokens, reused = [], []
        for index, messages in enumerate(prompts):
            order = ("cached", "uncached") if index % 2 == 0 else ("uncached", "cached")
            for name in order:
                seconds, prompt_tokens, cached_tokens = prefill_seconds(engines[name], kind, messages,
                                                                        args.new_tokens)
                if index >= WARM:
                    times[name].append(seconds)
                    if name == "cached":
                        tokens.append(prompt_tokens)
                        reused.append(cached_tokens)
        cached, uncached = statistics.mean(times["cached"]), statistics.mean(times["uncached"])
        report[kind] = {"n": len(times["cached"]), "prompt_tokens": round(statistics.mean(tokens), 1),
                        "tokens_reused": round(statistics.mean(reused), 1),
                        "prefill_s_cached": round(cached, 4), "prefill_s_uncached": round(uncached, 4),
                        "speedup": round(uncached / cached, 3)}
        print(f"{kind:>9}: {report[kind]['n']} prompts of {report[kind]['prompt_tokens']} tokens, "
              f"{report[kind]['tokens_reused']} from the cache; prefill {cached * 1000:.1f} ms against "
              f"{uncached * 1000:.1f} ms uncached: x{uncached / cached:.2f}")
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
