"""Batching benchmark: alpha(b) per decode step and per task for b = 1..8, and tasks/s against llama.cpp's own
parallel decoding of the same GGUF (DESIGN.md sec. 4: b tasks in alpha(b) instead of b * alpha).

    python tools/bench/batching.py [--model smollm2-135m-instruct] [--threads 2] [--batches 1 2 3 4 5 6 7 8]
                                   [--runs 2] [--new-tokens 64] [--out profile.json] [--gguf FILE]

Per step: b rows decoding together in one continuous batch (OnnxEngine.open_batch), the median wall time of one
decode step over 24 steps once all b are prefilled. Per task: the wall time of `generate_batch` on b fixed chat
prompts (46-53 tokens, greedy, EOS ignored, `--new-tokens` each, prefill included) divided by b. llama.cpp
(llama-cpp-python, when installed): the same prompts rendered by our template, prefilled together in one
`llama_batch` with one sequence id each, then one token per sequence per `llama_decode`, greedy, same threads and
token counts, in a subprocess (some builds crash on multi-token batches; DESIGN.md sec. 8); repacked weight
buffers off (`use_extra_bufts = False`), the AMX-safe setting. Runs of every b and both engines alternate so load
from other processes hits them alike. `--out` writes the batch profile the planner, simulator and synthetic
engine read (engine/batch_profile.py). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import subprocess
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
STEPS = 24  # decode steps timed per b


def _requests(b: int, new_tokens: int) -> list[GenerationRequest]:
    return [
        GenerationRequest(messages=(ChatMessage("user", QUESTIONS[i % 4]),), max_new_tokens=new_tokens, temperature=0)
        for i in range(b)
    ]


def _long_request(new_tokens: int) -> GenerationRequest:
    """A prompt as long as a synthesis prompt carrying three answers of 128 tokens (~480 tokens)."""
    return GenerationRequest(messages=(ChatMessage("user", " ".join(QUESTIONS * 6)),), max_new_tokens=new_tokens,
                             temperature=0)


def step_seconds(engine, b: int, new_tokens: int, statistic=statistics.median,
                 requests: list[GenerationRequest] | None = None) -> float:
    """Wall time of one decode step with b rows, all prefilled: the median (or `statistic`) over STEPS steps."""
    batch = engine.open_batch(max_rows=b, stop_at_eos=False)
    for index, request in enumerate(requests or _requests(b, new_tokens + STEPS + 8)):
        batch.add(request, tag=index)
    while batch.decoding < b:
        batch.step()
    times = []
    for _ in range(STEPS):
        started = time.perf_counter()
        batch.step()
        times.append(time.perf_counter() - started)
    batch.drop_all()
    return statistic(times)


def task_seconds(engine, b: int, new_tokens: int) -> float:
    """Wall time of b tasks decoded together (prefill included), per task."""
    started = time.perf_counter()
    results = engine.generate_batch(_requests(b, new_tokens), stop_at_eos=False)
    wall = time.perf_counter() - started
    assert all(isinstance(r, Generation) and r.new_tokens == new_tokens for r in results), results
    return wall / b


def token_costs(engine, b: int, runs: int) -> dict:
    """What engine/batch_profile.py's TokenCosts reads: the step's cost per slot of context (every row long, and
    one row long among short ones, which parts the rows' own reads from the mask's width) and prefill seconds
    against prompt length (short and long prompts, one new token), fastest of `runs` each."""
    # enough new tokens that the first rows still decode when the last has been prefilled (a long prompt is 8
    # chunks, and the first row decodes through the others' chunks)
    budget = 8 * b + STEPS + 16
    short = _requests(b, budget)
    long_ = [_long_request(budget) for _ in range(b)]
    short_len = statistics.mean(engine.count_prompt_tokens(r.messages) for r in short)
    long_len = engine.count_prompt_tokens(long_[0].messages)
    base = min(step_seconds(engine, b, 0, requests=short) for _ in range(runs))
    every = min(step_seconds(engine, b, 0, requests=long_) for _ in range(runs))
    one = min(step_seconds(engine, b, 0, requests=[long_[0], *short[1:]]) for _ in range(runs))
    gap = long_len - short_len
    context_s = max(0.0, (every - one) / ((b - 1) * gap))  # all long minus one long: b - 1 rows' own slots
    padding_s = max(0.0, (one - base - context_s * gap) / (b * gap))

    def prefill(request: GenerationRequest) -> float:
        one_token = GenerationRequest(messages=request.messages, max_new_tokens=1, temperature=0)
        return min(_timed(lambda: engine.generate_batch([one_token], stop_at_eos=False)) for _ in range(runs + 1))

    p_short, p_long = prefill(short[0]), prefill(long_[0])
    s0_len = engine.count_prompt_tokens(short[0].messages)
    slope = (p_long - p_short) / (long_len - s0_len)
    return {"step_context": round(short_len + STEPS / 2, 1), "context_s": context_s, "padding_s": padding_s,
            "prefill_fixed_s": max(0.0, p_short - slope * s0_len), "prefill_token_s": slope,
            "prefill_chunk": engine.prefill_chunk, "rows": b, "long_prompt_tokens": long_len,
            "step_s_short_long_mixed": [round(base, 6), round(every, 6), round(one, 6)],
            "prefill_s_short_long": [round(p_short, 6), round(p_long, 6)]}


def _timed(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def worker_llamacpp(gguf: Path, model_dir: Path, threads: int, b: int, new_tokens: int) -> dict:
    """b sequences in one llama.cpp context: prefilled in one batch, then one token each per decode."""
    import llama_cpp as ll
    import numpy as np

    from edge_agent.artifact.chat_template import ChatTemplate
    from edge_agent.artifact.manifest import read_manifest

    manifest = read_manifest(model_dir)
    template = ChatTemplate(manifest.chat_template)
    quiet = ll.llama_log_callback(lambda level, text, data: None)  # kept referenced while llama.cpp runs
    ll.llama_log_set(quiet, ctypes.c_void_p())
    ll.llama_backend_init()
    model_params = ll.llama_model_default_params()
    model_params.use_extra_bufts = False  # repacked (AMX) buffers crash multi-token batches on some builds
    model = ll.llama_load_model_from_file(str(gguf).encode(), model_params)
    vocab = ll.llama_model_get_vocab(model)
    n_vocab = ll.llama_vocab_n_tokens(vocab)
    prompts = []
    for request in _requests(b, new_tokens):
        text = template.render(request.messages, add_generation_prompt=True).encode()
        tokens = (ll.llama_token * 512)()
        count = ll.llama_tokenize(vocab, text, len(text), tokens, 512, False, True)
        prompts.append(list(tokens[:count]))
    context_params = ll.llama_context_default_params()
    context_params.n_ctx = b * (max(map(len, prompts)) + new_tokens + 8)
    context_params.n_batch = max(512, sum(map(len, prompts)))
    context_params.n_seq_max = b
    context_params.n_threads = context_params.n_threads_batch = threads
    ctx = ll.llama_init_from_model(model, context_params)
    batch = ll.llama_batch_init(context_params.n_batch, 0, b)

    def fill(entries: list[tuple[int, int, int, bool]]) -> None:  # (token, position, sequence, wants logits)
        batch.n_tokens = len(entries)
        for i, (token, position, seq, logits) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, position, 1
            batch.seq_id[i][0], batch.logits[i] = seq, logits

    def greedy(i: int) -> int:
        row = np.ctypeslib.as_array(ctypes.cast(ll.llama_get_logits_ith(ctx, i), ctypes.POINTER(ctypes.c_float)),
                                    shape=(n_vocab,))
        return int(np.argmax(row))

    def once() -> float:
        ll.llama_memory_clear(ll.llama_get_memory(ctx), True)
        started = time.perf_counter()
        entries, last = [], []
        for seq, ids in enumerate(prompts):
            entries += [(t, p, seq, p == len(ids) - 1) for p, t in enumerate(ids)]
            last.append(len(entries) - 1)
        fill(entries)
        if ll.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed on the prompts")
        tokens = [greedy(i) for i in last]
        for step in range(1, new_tokens):
            fill([(tokens[s], len(prompts[s]) + step - 1, s, True) for s in range(b)])
            if ll.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            tokens = [greedy(s) for s in range(b)]
        return time.perf_counter() - started

    once()  # warm-up
    wall = once()
    ll.llama_batch_free(batch)
    return {"b": b, "task_s": wall / b, "tasks_per_s": b / wall}


def llamacpp_run(gguf: Path, model_dir: Path, threads: int, b: int, new_tokens: int) -> dict | None:
    command = [sys.executable, __file__, "--worker-llamacpp", str(gguf), str(model_dir), str(threads), str(b),
               str(new_tokens)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        print(f"llama.cpp b={b}: exit {done.returncode}: {done.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--worker-llamacpp":
        gguf, model_dir, threads, b, new_tokens = sys.argv[2:7]
        print(json.dumps(worker_llamacpp(Path(gguf), Path(model_dir), int(threads), int(b), int(new_tokens))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=list(range(1, 9)))
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, help="write the batch profile (JSON) here")
    parser.add_argument("--gguf", type=Path, help="GGUF for llama.cpp (default: the one kept beside the build)")
    parser.add_argument("--no-llamacpp", action="store_true")
    parser.add_argument("--fastest", action="store_true",
                        help="per step, the fastest of the steps instead of the median: on a machine loaded by other "
                             "work, the one least preempted (the profile then describes the machine, not its load)")
    args = parser.parse_args(argv)
    try:
        model_dir = resolve_model_dir(args.model)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    from edge_agent.engine.machine import cpu_features
    from edge_agent.engine.onnx import OnnxEngine
    from edge_agent.engine.session import ort_version

    gguf = args.gguf or next(model_dir.parent.glob(f".{model_dir.name}.work/*.gguf"), None)
    try:
        import llama_cpp

        llamacpp = None if args.no_llamacpp or gguf is None else llama_cpp.__version__
    except ImportError:
        llamacpp = None
    load_before = os.getloadavg()[0]
    batches = sorted(set(args.batches))
    engine = OnnxEngine(model_dir, threads=args.threads, max_batch=max(batches))
    for b in batches:  # warm-up: allocations for each batch shape
        engine.generate_batch(_requests(b, 4), stop_at_eos=False)
    steps: dict[int, list[float]] = {b: [] for b in batches}
    tasks: dict[int, list[float]] = {b: [] for b in batches}
    theirs: dict[int, list[float]] = {b: [] for b in batches}
    for _ in range(args.runs):
        for b in batches:
            steps[b].append(step_seconds(engine, b, args.new_tokens, min if args.fastest else statistics.median))
            tasks[b].append(task_seconds(engine, b, args.new_tokens))
            if llamacpp:
                result = llamacpp_run(gguf, model_dir, args.threads, b, args.new_tokens)
                if result:
                    theirs[b].append(result["task_s"])
    costs = token_costs(engine, max(batches), args.runs) if max(batches) > 1 else None
    engine.close()
    step_s = {b: statistics.median(steps[b]) for b in batches}
    task_s = {b: statistics.median(tasks[b]) for b in batches}
    their_s = {b: statistics.median(theirs[b]) for b in batches if theirs[b]}
    print(f"{args.model}, {args.threads} threads, {args.new_tokens} greedy new tokens per task, median of "
          f"{args.runs} runs; llama.cpp: {llamacpp or 'not run (llama-cpp-python or the GGUF missing)'}")
    print("| b | step ms | step vs b=1 | s per task | tasks/s | vs b=1 | llama.cpp tasks/s | ours / llama.cpp |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    first = batches[0]
    for b in batches:
        ours, cpp = 1 / task_s[b], (1 / their_s[b] if b in their_s else None)
        print(f"| {b} | {step_s[b] * 1000:.1f} | {step_s[b] / step_s[first]:.2f}x | {task_s[b]:.3f} | {ours:.2f} | "
              f"{task_s[first] / task_s[b]:.2f}x | {f'{cpp:.2f}' if cpp else '-'} | "
              f"{f'{ours / cpp:.2f}x' if cpp else '-'} |")
    profile = {
        "model": args.model,
        "threads": args.threads,
        "new_tokens": args.new_tokens,
        "step_statistic": "min" if args.fastest else "median",
        "cpu": platform.processor() or platform.machine(),
        "cpu_features": list(cpu_features()),
        "onnxruntime": ort_version(),
        "step_s": {str(b): round(step_s[b], 6) for b in batches},
        "task_s": {str(b): round(task_s[b], 6) for b in batches},
        "llamacpp": llamacpp,
        "llamacpp_task_s": {str(b): round(s, 6) for b, s in their_s.items()},
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    if costs:
        profile["token_costs"] = costs
        print(f"token costs (b = {costs['rows']}): prefill {costs['prefill_token_s'] * 1000:.2f} ms/token + "
              f"{costs['prefill_fixed_s'] * 1000:.1f} ms; a step +{costs['context_s'] * 1e6:.2f} us per slot of "
              f"context of each row, +{costs['padding_s'] * 1e6:.2f} us per row per slot of the longest")
    if batches != list(range(1, len(batches) + 1)):
        print("note: a profile needs b = 1..B without gaps; not written", file=sys.stderr)
    elif args.out:
        args.out.write_text(json.dumps(profile, indent=2) + "\n")
    print(json.dumps(profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
