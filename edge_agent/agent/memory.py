"""How many bytes of queued work this board can hold, from what psutil says is really free."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psutil

MB = 1024 * 1024


@dataclass(frozen=True)
class MemoryReading:
    available_bytes: int  # psutil.virtual_memory().available
    rss_bytes: int  # this process
    limit_bytes: int | None  # systemd MemoryMax / cgroup memory.max, if any


def queue_cap_bytes(reading: MemoryReading, *, fraction: float, reserve_bytes: int) -> int:
    """The queue may charge `fraction` of what is free after the reserve; under a memory limit, of what the
    limit leaves above our own RSS, whichever is smaller."""
    free = reading.available_bytes
    if reading.limit_bytes is not None:
        free = min(free, reading.limit_bytes - reading.rss_bytes)
    return max(0, int((free - reserve_bytes) * fraction))


def task_charge_bytes(prompt_bytes: int, prompt_tokens: int, max_new_tokens: int, kv_bytes_per_token: int) -> int:
    """What one task will need: its text plus the KV cache of the prompt and its generation budget."""
    return prompt_bytes + kv_bytes_per_token * (prompt_tokens + max_new_tokens)


class MemoryProbe:
    """Reads memory now; `limit_mb` from config wins over the cgroup's memory.max."""

    def __init__(self, limit_mb: int = 0):
        self._process = psutil.Process()
        self._limit = limit_mb * MB if limit_mb else _cgroup_limit()

    def read(self) -> MemoryReading:
        return MemoryReading(
            available_bytes=psutil.virtual_memory().available,
            rss_bytes=self._process.memory_info().rss,
            limit_bytes=self._limit,
        )


def _cgroup_limit() -> int | None:
    try:
        own = Path("/proc/self/cgroup").read_text().strip().splitlines()[-1].split(":", 2)[2]
        value = (Path("/sys/fs/cgroup") / own.lstrip("/") / "memory.max").read_text().strip()
    except (OSError, IndexError):
        return None
    return None if value == "max" else int(value)
