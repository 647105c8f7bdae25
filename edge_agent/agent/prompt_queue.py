"""The agent's ledger of inference tasks in the system (own prompts' and peers' together, as in the paper).

The inference worker keeps them in FCFS order; this ledger keeps what admission needs: how many tasks and how
many bytes are charged until each is released, whatever becomes of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from ..engine import GenerationRequest


@dataclass(frozen=True)
class QueuedTask:
    task_id: str
    request_id: str
    layer: int
    origin: str  # who wants the result: this agent's id for own work, else the peer's
    generation: GenerationRequest
    charge_bytes: int
    enqueued_at: float = field(compare=False, default=0.0)


def admit(queued_bytes: int, queued_tasks: int, charge_bytes: int, cap_bytes: int, max_tasks: int) -> bool:
    """Admission under the memory-aware byte cap and the task-count bound (DESIGN section 3)."""
    if queued_tasks >= max_tasks:
        return False
    return queued_bytes + charge_bytes <= cap_bytes


class PromptQueue:
    """Tasks in the system (waiting or in service) and the bytes they are charged, until `release`d."""

    def __init__(self) -> None:
        self._tasks: dict[str, QueuedTask] = {}
        self.bytes = 0

    def add(self, task: QueuedTask) -> None:
        if task.task_id in self._tasks:
            raise ValueError(f"task {task.task_id} is already queued")
        self._tasks[task.task_id] = task
        self.bytes += task.charge_bytes

    def release(self, task_id: str) -> QueuedTask | None:
        """Give back a task's charge; None when it was not (or no longer) queued, so a release counts once."""
        task = self._tasks.pop(task_id, None)
        if task is not None:
            self.bytes -= task.charge_bytes
        return task

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[QueuedTask]:
        return iter(list(self._tasks.values()))
