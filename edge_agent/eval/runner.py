"""Asks each configuration's pending instructions of a mesh through the user client and keeps every answer."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future

from ..errors import PeerTimeoutError
from ..mqtt.client import MoaClient
from .grid import EvalConfig
from .instructions import Instruction, stratified_order
from .outputs import OutputFile
from .progress import Progress
from .queue_watch import QueueWatch

log = logging.getLogger(__name__)


def answer_stats(answer: dict, count_tokens: Callable[[str], int] | None) -> dict:
    """What is kept beside an output: end-to-end latency, inferences, board seconds (the sum of every inference's
    time in the trace: the hardware budget), which devices answered, and the output's length."""
    board_s = sum(entry.get("inference_s") or 0.0 for layer in answer.get("trace", []) for entry in layer["answered"])
    text = answer.get("response", "")
    stats = {"latency_s": answer.get("latency_s"), "inferences": answer.get("inferences"),
             "board_s": round(board_s, 3), "device": answer.get("device"), "output_chars": len(text),
             "output_words": len(text.split()),
             "devices": [[e["device"] for e in layer["answered"]] for layer in answer.get("trace", [])]}
    last = answer["trace"][-1] if answer.get("trace") else {}
    if last.get("kind") == "select":  # which proposal the agent's ranker returned, and how it scored them
        stats["select"] = {key: last.get(key) for key in ("ranker", "picked", "scores")}
    if count_tokens is not None:
        stats["output_tokens"] = count_tokens(text)
    return stats


def run_config(client: MoaClient, config: EvalConfig, items: list[Instruction], out: OutputFile, *,
               devices: list[str], parallel: int = 1, timeout_s: float = 900.0, max_new_tokens: int | None = None,
               count_tokens: Callable[[str], int] | None = None, seed: int = 0,
               queue: QueueWatch | None = None) -> int:
    """Ask every instruction not yet in `out` (in `stratified_order`), at most `parallel` in flight, round-robin
    over `devices`; with `queue`, each answer's stats keep the agents' mean queue while it was in flight.
    Returns how many answers came back as errors (they are not written: a rerun asks them again)."""
    pending = stratified_order([i for i in items if not out.done(i)], [i for i in items if out.done(i)], seed)
    progress = Progress(out.generator, len(items), already=len(items) - len(pending))
    request = config.request()
    if max_new_tokens is not None:
        request.setdefault("max_new_tokens", max_new_tokens)
    errors = 0
    in_flight: list[tuple[Instruction, Future, float]] = []
    next_device = 0
    try:
        while pending or in_flight:
            while pending and len(in_flight) < parallel:
                item = pending.pop(0)
                device = devices[next_device % len(devices)]
                next_device += 1
                in_flight.append((item, client.submit(device, item.instruction, **request), time.monotonic()))
            item, future, sent = in_flight[0]
            try:
                answer = future.result(timeout=max(0.1, sent + timeout_s - time.monotonic()))
            except TimeoutError:
                raise PeerTimeoutError(f"no answer to instruction {item.index} within {timeout_s:.0f}s") from None
            in_flight.pop(0)
            if "error" in answer:
                errors += 1
                log.warning("instruction %d (%s): error %s: %s", item.index, out.generator,
                            answer["error"].get("code"), answer["error"].get("message"))
                continue
            stats = answer_stats(answer, count_tokens)
            if queue is not None:
                stats["queue_length"] = queue.mean_between(sent, time.monotonic())
            out.add(item, answer["response"], stats)
            progress.step()
    finally:
        progress.close()
    return errors
