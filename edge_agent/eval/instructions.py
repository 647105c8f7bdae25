"""Which instructions an evaluation asks: AlpacaEval's 805 or a file of the same format, a stratified subset."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from . import sdist

ALPACA_EVAL = "alpaca_eval"


@dataclass(frozen=True)
class Instruction:
    index: int  # position in the source file: stable across subsets, reruns and configurations
    instruction: str
    dataset: str
    datasplit: str
    reference: str | None  # the source's `output` (AlpacaEval: a reference answer), None if it has none


def load_instructions(source: str) -> list[Instruction]:
    """`alpaca_eval` (the sdist's example/outputs.json) or a path to a JSON list of {instruction, dataset?, ...}."""
    if source == ALPACA_EVAL:
        text = sdist.read_member(sdist.OUTPUTS_MEMBER).decode("utf-8")
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise ConfigError([("--instructions", source, "neither `alpaca_eval` nor an existing file")])
        text = path.read_text(encoding="utf-8")
    try:
        rows = json.loads(text)
    except ValueError as exc:
        raise ConfigError([("--instructions", source, f"not JSON: {exc}")]) from None
    if not isinstance(rows, list) or not rows:
        raise ConfigError([("--instructions", source, "must be a non-empty JSON list")])
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("instruction"), str) or not row["instruction"].strip():
            raise ConfigError([(f"--instructions[{i}]", str(row)[:80], "needs a non-empty `instruction` string")])
        reference = row.get("output")
        out.append(Instruction(index=i, instruction=row["instruction"], dataset=str(row.get("dataset", "default")),
                               datasplit=str(row.get("datasplit", "eval")),
                               reference=reference if isinstance(reference, str) else None))
    return out


def stratified_order(pending: list[Instruction], done: list[Instruction], seed: int) -> list[Instruction]:
    """`pending` in the order to ask them: at each step the dataset furthest below its share of the whole
    (pending + done), a seeded random item within it. A run stopped at any point has answered a subset that is
    as close to stratified as its finished part allows, not the first datasets of the file (AlpacaEval's are in
    blocks)."""
    rng = random.Random(seed)
    queues: dict[str, list[Instruction]] = {}
    for item in pending:
        queues.setdefault(item.dataset, []).append(item)
    for queue in queues.values():
        rng.shuffle(queue)
    sizes = {name: len(queue) for name, queue in queues.items()}
    asked = {name: 0 for name in queues}
    for item in done:
        sizes[item.dataset] = sizes.get(item.dataset, 0) + 1
        asked[item.dataset] = asked.get(item.dataset, 0) + 1
    total = sum(sizes.values())
    order = []
    while len(order) < len(pending):
        step = sum(asked.values()) + 1
        name = max((n for n in queues if queues[n]), key=lambda n: (step * sizes[n] / total - asked[n], n))
        order.append(queues[name].pop())
        asked[name] += 1
    return order


def stratified_subset(items: list[Instruction], limit: int | None, seed: int) -> list[Instruction]:
    """`limit` instructions drawn at random within each `dataset`, in proportion to its size (largest remainders
    get the leftover places), returned in source order. The same seed and limit always give the same subset."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 1:
        raise ConfigError([("--limit", limit, "must be at least 1")])
    groups: dict[str, list[Instruction]] = {}
    for item in items:
        groups.setdefault(item.dataset, []).append(item)
    quotas = {name: limit * len(group) / len(items) for name, group in sorted(groups.items())}
    counts = {name: int(q) for name, q in quotas.items()}
    leftover = limit - sum(counts.values())
    for name in sorted(quotas, key=lambda n: (counts[n] - quotas[n], n))[:leftover]:
        counts[name] += 1
    rng = random.Random(seed)
    chosen = [item for name in sorted(groups) for item in rng.sample(groups[name], counts[name])]
    return sorted(chosen, key=lambda item: item.index)


def excluding(items: list[Instruction], outputs_files: list[Path]) -> list[Instruction]:
    """`items` without the instructions any of `outputs_files` (AlpacaEval format) answers: a replication on
    instructions disjoint from an earlier run's, still drawn by `--limit/--seed` from what is left."""
    from .outputs import read_outputs

    seen: set[str] = set()
    for path in outputs_files:
        try:
            seen.update(row["instruction"] for row in read_outputs(path))
        except FileNotFoundError:
            raise ConfigError([("--exclude", str(path), "no such file (an earlier run's OUT/<generator>.json)")]) \
                from None
        except (OSError, ValueError) as exc:
            raise ConfigError([("--exclude", str(path), str(exc))]) from None
    left = [item for item in items if item.instruction not in seen]
    if not left:
        raise ConfigError([("--exclude", [str(p) for p in outputs_files], "leaves no instruction to ask")])
    return left
