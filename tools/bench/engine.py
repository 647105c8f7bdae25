"""Engine benchmark: prefill ms, decode tok/s, peak RSS and quality (KL) of our engine vs llama.cpp.

    python tools/bench/engine.py [--model smollm2-135m-instruct] [--threads 1 2] [--runs 3] [--rounds 5]
                                 [--gguf PATH] [--reference smollm2-135m-instruct-fp32]

Every measurement runs in its own subprocess (peak RSS is then that engine's alone). Prompt: a fixed chat prompt
(about 53 tokens); 128 greedy new tokens, EOS ignored; median of `--runs` warm runs per process, `--rounds`
processes per engine and thread count, ours and llama.cpp's alternated; the median over the rounds. KL: mean over
the positions of a fixed text of KL(reference || engine) of the next-token distribution, the reference being the
fp32 export of the same weights (`edge-moa model build smollm2-135m-instruct --precision fp32 --name
smollm2-135m-instruct-fp32`). The last line printed is one JSON object (ratios are ours / llama.cpp's, the lower
over the thread counts run; prefill as a speed, so higher is better).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from edge_agent.artifact.store import resolve_model_dir
from edge_agent.engine.base import ChatMessage
from edge_agent.errors import ConfigError

PROMPT = (
    ChatMessage(
        "user",
        "Explain in a few sentences why the sky is blue during the day and red at sunset, "
        "for a curious ten year old.",
    ),
)
KL_TEXT = (
    "The Raspberry Pi is a series of small single-board computers developed in the United Kingdom. It is widely "
    "used in education, in home automation and for edge computing, where a model runs next to the sensors that "
    "feed it instead of in a distant data centre. Small language models can answer questions on such boards, "
    "although slowly: every token needs the whole network to be evaluated once."
)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_ours(model_dir: Path, threads: int, runs: int, new_tokens: int) -> dict:
    from edge_agent.engine.onnx import OnnxEngine

    engine = OnnxEngine(model_dir, threads=threads)
    prompt = engine.encode(engine.render_prompt(PROMPT))
    engine.generate_ids(prompt, max_new_tokens=8, stop_at_eos=False)  # warm-up
    prefill, decode = [], []
    for _ in range(runs):
        engine.generate_ids(prompt, max_new_tokens=new_tokens, stop_at_eos=False)
        timing = engine.last_timing
        prefill.append(timing.prefill_s * 1000)
        decode.append((timing.new_tokens - 1) / timing.decode_s)
    return {
        "prompt_tokens": len(prompt),
        "prefill_ms": statistics.median(prefill),
        "decode_tok_s": statistics.median(decode),
        "peak_rss_mb": _peak_rss_mb(),
    }


def worker_llamacpp(gguf: Path, model_dir: Path, threads: int, runs: int, new_tokens: int) -> dict:
    import llama_cpp

    from edge_agent.artifact.chat_template import ChatTemplate
    from edge_agent.artifact.manifest import read_manifest

    manifest = read_manifest(model_dir)  # the same prompt text as ours, rendered without loading our engine
    rendered = ChatTemplate(manifest.chat_template).render(PROMPT)
    llama = llama_cpp.Llama(
        model_path=str(gguf),
        n_ctx=512,
        n_threads=threads,
        n_threads_batch=threads,
        n_batch=512,
        verbose=False,
    )
    prompt = llama.tokenize(rendered.encode(), add_bos=False, special=True)

    def once() -> tuple[float, float]:
        llama.reset()
        t0 = time.perf_counter()
        llama.eval(prompt)
        t1 = time.perf_counter()
        for _ in range(new_tokens - 1):
            token = int(np.argmax(llama.scores[llama.n_tokens - 1]))
            llama.eval([token])
        t2 = time.perf_counter()
        return (t1 - t0) * 1000, (new_tokens - 1) / (t2 - t1)

    once()
    results = [once() for _ in range(runs)]
    return {
        "prompt_tokens": len(prompt),
        "prefill_ms": statistics.median(r[0] for r in results),
        "decode_tok_s": statistics.median(r[1] for r in results),
        "peak_rss_mb": _peak_rss_mb(),
    }


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _kl(reference: np.ndarray, other: np.ndarray) -> float:
    ref, oth = _log_softmax(reference), _log_softmax(other)
    return float(np.mean(np.sum(np.exp(ref) * (ref - oth), axis=-1)))


def quality(model_dir: Path, reference_dir: Path, gguf: Path | None) -> dict:
    from edge_agent.engine.onnx import OnnxEngine

    reference = OnnxEngine(reference_dir, threads=2)
    ids = reference.encode(KL_TEXT)
    ref_logits = reference.next_token_logits(ids)
    ours = OnnxEngine(model_dir, threads=2).next_token_logits(ids)
    result = {"kl_ours": _kl(ref_logits, ours), "tokens": len(ids)}
    if gguf is not None:
        try:
            import llama_cpp
        except ImportError:
            return result
        llama = llama_cpp.Llama(model_path=str(gguf), n_ctx=512, logits_all=True, verbose=False)
        llama.eval(ids)
        result["kl_llamacpp"] = _kl(ref_logits, np.asarray(llama.scores[: len(ids)]))
    return result


def _median_round(rounds: list[dict]) -> dict:
    """Per figure, the median over rounds (peak RSS: the largest)."""
    return {
        "prompt_tokens": rounds[0]["prompt_tokens"],
        "prefill_ms": statistics.median(r["prefill_ms"] for r in rounds),
        "decode_tok_s": statistics.median(r["decode_tok_s"] for r in rounds),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in rounds),
    }


def _run_worker(*args: str) -> dict:
    output = subprocess.run(
        [sys.executable, __file__, "--worker", *args], capture_output=True, text=True, check=False
    )
    if output.returncode != 0:
        raise SystemExit(f"worker {args} failed:\n{output.stderr[-2000:]}")
    return json.loads(output.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=3, help="timed runs per worker process")
    parser.add_argument("--rounds", type=int, default=5, help="worker processes per engine, alternated")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument(
        "--gguf", type=Path, help="source GGUF for llama.cpp (default: kept beside the build)"
    )
    parser.add_argument("--reference", default=None, help="fp32 build for KL (default: MODEL-fp32 if built)")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        kind, *rest = args.worker
        if kind == "ours":
            print(json.dumps(worker_ours(Path(rest[0]), int(rest[1]), int(rest[2]), int(rest[3]))))
        elif kind == "llamacpp":
            print(
                json.dumps(
                    worker_llamacpp(Path(rest[0]), Path(rest[1]), int(rest[2]), int(rest[3]), int(rest[4]))
                )
            )
        elif kind == "quality":
            gguf = Path(rest[2]) if rest[2] != "-" else None
            print(json.dumps(quality(Path(rest[0]), Path(rest[1]), gguf)))
        return

    load_before = os.getloadavg()[0]  # other work on the machine distorts every figure: reported alongside
    model_dir = resolve_model_dir(args.model)
    gguf = args.gguf or next(model_dir.parent.glob(f".{model_dir.name}.work/*.gguf"), None)
    try:
        import llama_cpp  # noqa: F401

        have_llamacpp = gguf is not None
    except ImportError:
        have_llamacpp = False
    rows, ratios_decode, ratios_prefill, rss = [], [], [], []
    pairs: dict[int, list[float]] = {}
    for threads in args.threads:
        # the machine's speed drifts by 10-20 % over seconds: alternate the two engines and keep each one's
        # median over the rounds, so both see the same conditions
        ours_rounds, theirs_rounds = [], []
        for _ in range(args.rounds):
            ours_rounds.append(
                _run_worker("ours", str(model_dir), str(threads), str(args.runs), str(args.new_tokens))
            )
            if have_llamacpp:
                theirs_rounds.append(
                    _run_worker(
                        "llamacpp", str(gguf), str(model_dir), str(threads), str(args.runs), str(args.new_tokens)
                    )
                )
        ours = _median_round(ours_rounds)
        rows.append(("ours (onnxruntime)", threads, ours))
        rss.append(ours["peak_rss_mb"])
        if have_llamacpp:
            theirs = _median_round(theirs_rounds)
            rows.append(("llama.cpp (GGUF)", threads, theirs))
            ratios_decode.append(ours["decode_tok_s"] / theirs["decode_tok_s"])
            ratios_prefill.append(theirs["prefill_ms"] / ours["prefill_ms"])
            # each round's own pair (ours, then theirs right after): how far the machine's drift moved the ratio
            pairs[threads] = sorted(
                round(o["decode_tok_s"] / t["decode_tok_s"], 2) for o, t in zip(ours_rounds, theirs_rounds)
            )

    summary: dict[str, object] = {
        "model": model_dir.name,
        "threads": args.threads,
        "runs": args.runs,
        "rounds": args.rounds,
        "new_tokens": args.new_tokens,
        "load_average_1min": round(load_before, 2),
        "peak_rss_mb": round(max(rss), 1),
    }
    reference = None
    try:
        reference = resolve_model_dir(args.reference or f"{model_dir.name}-fp32")
    except ConfigError as exc:
        print(f"no KL: {exc}", file=sys.stderr)
    if reference is not None:
        summary.update(
            _run_worker("quality", str(model_dir), str(reference), str(gguf) if have_llamacpp else "-")
        )

    print(
        f"{'engine':22} {'threads':>7} {'prompt':>6} {'prefill ms':>10} {'decode tok/s':>12} {'peak RSS MB':>11}"
    )
    for name, threads, r in rows:
        print(
            f"{name:22} {threads:>7} {r['prompt_tokens']:>6} {r['prefill_ms']:>10.1f} {r['decode_tok_s']:>12.1f} "
            f"{r['peak_rss_mb']:>11.0f}"
        )
    if ratios_decode:
        summary["decode_ratio_vs_llamacpp"] = round(min(ratios_decode), 3)
        summary["decode_ratio_by_threads"] = {t: round(r, 3) for t, r in zip(args.threads, ratios_decode)}
        summary["prefill_ratio_vs_llamacpp"] = round(min(ratios_prefill), 3)
        summary["decode_ratio_per_round"] = pairs
    for key in ("kl_ours", "kl_llamacpp"):
        if key in summary:
            summary[key] = round(float(summary[key]), 4)  # type: ignore[arg-type]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
