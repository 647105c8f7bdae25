"""One FCFS queue of inference tasks per agent (own prompts and peers' tasks together, as in the paper)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from .engine import GenerationRequest


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
    """FCFS; `bytes` counts queued tasks and the one in service until it is `release`d."""

    def __init__(self) -> None:
        self._tasks: deque[QueuedTask] = deque()
        self._in_service: dict[str, QueuedTask] = {}
        self.bytes = 0

    def push(self, task: QueuedTask) -> None:
        self._tasks.append(task)
        self.bytes += task.charge_bytes

    def pop(self) -> QueuedTask:
        task = self._tasks.popleft()
        self._in_service[task.task_id] = task
        return task

    def release(self, task_id: str) -> None:
        task = self._in_service.pop(task_id, None)
        if task is not None:
            self.bytes -= task.charge_bytes

    @property
    def waiting(self) -> int:
        return len(self._tasks)

    @property
    def in_service(self) -> int:
        return len(self._in_service)

    def __len__(self) -> int:
        """Tasks in the system: waiting plus in service."""
        return len(self._tasks) + len(self._in_service)

    def __iter__(self) -> Iterator[QueuedTask]:
        return iter(self._tasks)
