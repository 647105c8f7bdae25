"""Admission to the agent's queue: each task's memory charge against the cap psutil allows (DESIGN section 3)."""

from __future__ import annotations

from collections.abc import Callable

from ..config import QueueSection
from ..engine import GenerationRequest
from .memory import MemoryProbe, MemoryReading, queue_cap_bytes, task_charge_bytes
from .prompt_queue import PromptQueue, QueuedTask, admit


class Admission:
    """Owns the ledger of tasks in the system; says whether one more fits, charges it, and gives it back."""

    def __init__(self, *, queue: QueueSection, memory: MemoryProbe, kv_bytes_per_token: int,
                 row_charge: Callable[[int, int], int] | None = None):
        self.section, self.memory, self.kv_bytes_per_token = queue, memory, kv_bytes_per_token
        self.row_charge = row_charge  # the engine's own count of what a batch row holds, when it has one
        self.ledger = PromptQueue()

    def charge(self, generation: GenerationRequest, prompt_tokens: int) -> int:
        prompt_bytes = sum(len(m.content.encode()) for m in generation.messages)
        if self.row_charge is not None:
            return prompt_bytes + self.row_charge(prompt_tokens, generation.max_new_tokens)
        return task_charge_bytes(prompt_bytes, prompt_tokens, generation.max_new_tokens, self.kv_bytes_per_token)

    def cap(self, reading: MemoryReading | None = None) -> int:
        reading = reading or self.memory.read()
        return queue_cap_bytes(reading, fraction=self.section.memory_fraction,
                               reserve_bytes=self.section.reserve_mb * 2**20)

    def admits(self, charge: int) -> bool:
        return admit(self.ledger.bytes, len(self.ledger), charge, self.cap(), self.section.max_tasks)

    def add(self, task: QueuedTask) -> None:
        self.ledger.add(task)

    def release(self, task_id: str) -> QueuedTask | None:
        return self.ledger.release(task_id)

    def describe(self) -> str:
        return f"{len(self.ledger)} tasks, {self.ledger.bytes} bytes of a {self.cap()}-byte cap"
