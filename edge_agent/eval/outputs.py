"""One configuration's results on disk: `OUT/<generator>.json` (AlpacaEval format) and its per-output stats beside."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from .instructions import Instruction

log = logging.getLogger(__name__)


class OutputFile:
    """AlpacaEval's `model_outputs` list (instruction, output, generator, dataset, datasplit), in source order,
    rewritten atomically after every answer, and `<generator>.stats.jsonl`: one line per answer with its latency,
    inferences, board seconds, lengths and the index of its instruction. A rerun reads both and skips what is done."""

    def __init__(self, out_dir: Path, generator: str):
        self.generator = generator
        self.path = out_dir / f"{generator}.json"
        self.stats_path = out_dir / f"{generator}.stats.jsonl"
        self._rows: dict[int, dict] = {}  # instruction index -> output row
        out_dir.mkdir(parents=True, exist_ok=True)
        stats = {}
        if self.stats_path.is_file():
            for line in self.stats_path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                    stats[entry["instruction"]] = entry["index"]
                except (ValueError, KeyError, TypeError):
                    log.warning("%s: skipping a damaged line %r", self.stats_path, line[:80])
        if self.path.is_file():
            try:
                rows = json.loads(self.path.read_text(encoding="utf-8"))
            except ValueError:
                log.warning("%s is damaged (a crash mid-write?): its outputs will be asked again", self.path)
                rows = []
            for row in rows:
                if row.get("instruction") in stats:
                    self._rows[stats[row["instruction"]]] = row

    def done(self, item: Instruction) -> bool:
        return item.index in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, item: Instruction, output: str, stats: dict) -> None:
        self._rows[item.index] = {"instruction": item.instruction, "output": output, "generator": self.generator,
                                  "dataset": item.dataset, "datasplit": item.datasplit}
        with open(self.stats_path, "a", encoding="utf-8") as handle:  # stats first: a row without them is redone
            handle.write(json.dumps({"index": item.index, "instruction": item.instruction, **stats}) + "\n")
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps([self._rows[i] for i in sorted(self._rows)], indent=1, ensure_ascii=False),
                       encoding="utf-8")
        os.replace(tmp, self.path)


def read_outputs(path: Path) -> list[dict]:
    """An AlpacaEval-format outputs file (ours or anyone's): a JSON list with `instruction` and `output`."""
    rows = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "instruction" in r and "output" in r
                                             for r in rows):
        raise ValueError(f"{path}: not a JSON list of objects with `instruction` and `output`")
    return rows


def read_stats(outputs_path: Path) -> dict[str, dict]:
    """The stats lines beside an outputs file, by instruction (empty when there are none)."""
    path = Path(outputs_path).with_suffix(".stats.jsonl")
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
            out[entry["instruction"]] = entry
        except (ValueError, KeyError, TypeError):
            continue
    return out
