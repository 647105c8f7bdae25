"""alpha(b) as measured: seconds per decode step with b rows, read by the synthetic engine, planner and simulator.

The file is what `tools/bench/batching.py --out FILE` writes:
`{"model", "threads", "cpu", "onnxruntime", "step_s": {"1": s, ..., "8": s}, "task_s": {"1": s, ...}, ...}`.
`step_s[b]` is the wall time of one decode step serving b rows; a row's progress per second is then
1 / step_s[b] tokens, so b rows together go `b * step_s[1] / step_s[b]` times as fast as one alone.
`task_s[b]` is the wall time of b whole tasks served together (prefill included) divided by b.

Two readings (`basis`): `step` prices a row by decode steps alone, which is what the synthetic engine emulates;
`task` prices it by whole tasks, so the newcomers' prefill, which the step times leave out, is in the cost.
The planner and the simulator read `task` where the file has it: with short answers the prefill is a large
part of a task (16 new tokens: b = 4 serves 2.2x the tasks by steps, 1.6x by tasks), and capacity follows tasks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import ConfigError


@dataclass(frozen=True)
class BatchProfile:
    step_s: tuple[float, ...]  # step_s[b - 1]: seconds one row's unit of progress takes with b rows, b = 1..len
    source: str = ""
    basis: str = "step"  # what step_s was made from: decode steps, or whole tasks (b * task_s[b])

    def __post_init__(self) -> None:
        if not self.step_s or any(not s > 0 for s in self.step_s):
            raise ConfigError(
                [("--batch-profile", self.source, "step_s must hold positive seconds for b = 1..")]
            )

    @classmethod
    def linear(cls, batch_cost: float, rows: int = 8) -> BatchProfile:
        """The synthetic engine's default: a step with b rows costs 1 + batch_cost * (b - 1) single steps."""
        return cls(tuple(1.0 + batch_cost * (b - 1) for b in range(1, rows + 1)), f"linear:{batch_cost}")

    @classmethod
    def read(cls, path: str | Path, basis: str = "step") -> BatchProfile:
        """The file's step times (`basis="step"`), or its whole-task times where it has them for every b from 1
        (`basis="task"`: a row of b then costs b * task_s[b], prefill included; falls back to steps without)."""
        if basis not in ("step", "task"):
            raise ConfigError([("--profile-basis", basis, "must be step or task")])
        try:
            data = json.loads(Path(path).read_text())
            steps = data["step_s"]
            step_s = tuple(float(steps[str(b)]) for b in range(1, len(steps) + 1))
            tasks = data.get("task_s") or {}
            rows = 0
            while str(rows + 1) in tasks:
                rows += 1
            if basis == "task" and rows:
                return cls(tuple((b + 1) * float(tasks[str(b + 1)]) for b in range(rows)), str(path), "task")
        except OSError as exc:
            raise ConfigError([("--batch-profile", str(path), f"cannot read: {exc.strerror}")]) from exc
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError([("--batch-profile", str(path), f"not a batch profile ({exc!r})")]) from exc
        return cls(step_s, str(path))

    def calibrated(self, b: int, slowdown: float) -> BatchProfile:
        """The same curve stretched so that slowdown(b) is `slowdown`, as measured where the agents run (several
        agents sharing cores batch worse than one process measured alone): slowdown'(x) = 1 + (slowdown(x) - 1)
        * (slowdown - 1) / (self.slowdown(b) - 1)."""
        if b < 2 or not slowdown >= 1.0 or self.slowdown(b) <= 1.0:
            why = f"needs b >= 2, a slowdown >= 1 and a profile that slows down at b = {b}"
            raise ConfigError([("batch slowdown", slowdown, why)])
        stretch = (slowdown - 1.0) / (self.slowdown(b) - 1.0)
        steps = tuple(self.step_s[0] * (1.0 + (self.slowdown(x) - 1.0) * stretch) for x in range(1, self.rows + 1))
        return BatchProfile(steps, f"{self.source} (x{stretch:.2f}: slowdown {slowdown:.2f} at b = {b} as measured "
                                   f"under load)", self.basis)

    @property
    def rows(self) -> int:
        return len(self.step_s)

    def slowdown(self, b: int) -> float:
        """How much longer a step with b rows takes than a step with one (>= 1 in practice; 1 at b = 1).
        Past the measured rows it grows linearly with the last measured increment."""
        if b <= 1:
            return 1.0
        if b <= self.rows:
            return self.step_s[b - 1] / self.step_s[0]
        last = self.step_s[-1] - (self.step_s[-2] if self.rows > 1 else 0.0)
        return (self.step_s[-1] + last * (b - self.rows)) / self.step_s[0]

    def speedup(self, b: int) -> float:
        """Tasks served per unit time with b rows, relative to one row: b / slowdown(b)."""
        return b / self.slowdown(b)

    def best_rows(self, max_rows: int) -> int:
        """The b <= max_rows with the highest throughput (where more rows stop paying)."""
        return max(range(1, max_rows + 1), key=self.speedup)


@dataclass(frozen=True)
class TokenCosts:
    """A task's cost token by token, for the simulator's iteration model (stability/iteration_server.py).

    From the same file when `tools/bench/batching.py` measured them (`token_costs`): a decode step with b rows
    costs `decode.step_s[b - 1]` at a context of `step_context` slots per row, plus `context_s` per slot that
    the rows hold beyond it (each row's attention reads its own slots) and `padding_s` per row per slot the
    longest row holds beyond it (the attention mask is as wide as the longest row); a prompt of P tokens
    prefills in `prefill_fixed_s + prefill_token_s * P`, in pieces of `prefill_chunk`. Whole-task profiles hide
    what this separates: a synthesis prompt carrying three answers prefills as long as the answer decodes, and
    prefill does not batch.
    """

    decode: BatchProfile
    step_context: float
    context_s: float
    padding_s: float
    prefill_fixed_s: float
    prefill_token_s: float
    prefill_chunk: int = 64

    @classmethod
    def read(cls, path: str | Path) -> TokenCosts:
        decode = BatchProfile.read(path, "step")
        try:
            costs = json.loads(Path(path).read_text())["token_costs"]
            return cls(decode, float(costs["step_context"]), max(0.0, float(costs["context_s"])),
                       max(0.0, float(costs["padding_s"])), max(0.0, float(costs["prefill_fixed_s"])),
                       float(costs["prefill_token_s"]), int(costs["prefill_chunk"]))
        except (KeyError, TypeError) as exc:
            why = "has no token_costs: measure it again with tools/bench/batching.py (needed by --profile-basis tokens)"
            raise ConfigError([("--batch-profile", str(path), why)]) from exc
        except ValueError as exc:
            raise ConfigError([("--batch-profile", str(path), f"not a batch profile ({exc!r})")]) from exc

    def step(self, contexts: list[float]) -> float:
        """Seconds of one decode step of rows holding `contexts` slots each (0 for no row)."""
        b = len(contexts)
        if not b:
            return 0.0
        base = self.decode.step_s[0] * self.decode.slowdown(b)
        extra = sum(max(0.0, c - self.step_context) for c in contexts)
        return base + self.context_s * extra + self.padding_s * b * max(0.0, max(contexts) - self.step_context)

    def prefill(self, prompt_tokens: int) -> float:
        return self.prefill_fixed_s + self.prefill_token_s * prompt_tokens

    def stretched(self, stretch: float) -> TokenCosts:
        """The same costs with each step's extra over one row, slowdown(b) - 1, times `stretch` (as fitted to the
        live agents: stability/token_calibration.py)."""
        one = self.decode.step_s[0]
        steps = tuple(one * (1.0 + (self.decode.slowdown(b) - 1.0) * stretch) for b in range(1, self.decode.rows + 1))
        return replace(self, decode=BatchProfile(steps, f"{self.decode.source} (batch cost x{stretch:.2f})",
                                                 self.decode.basis))
