"""A one-line progress report with the ETA, redrawn on a terminal and printed every few items otherwise."""

from __future__ import annotations

import sys
import time


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class Progress:
    def __init__(self, title: str, total: int, *, already: int = 0, stream=None):
        self.title = title
        self.total = total
        self.count = already
        self._started_at_count = already
        self._t0 = time.monotonic()
        self._stream = stream or sys.stderr
        self._tty = getattr(self._stream, "isatty", lambda: False)()

    def line(self) -> str:
        done = self.count - self._started_at_count
        elapsed = time.monotonic() - self._t0
        per_item = elapsed / done if done else None
        eta = format_duration(per_item * (self.total - self.count)) if per_item else "?"
        rate = f"{per_item:.1f}s/item" if per_item else "-"
        width = 24
        filled = int(width * self.count / self.total) if self.total else width
        return (f"{self.title} [{'#' * filled}{'.' * (width - filled)}] {self.count}/{self.total} "
                f"{rate} ETA {eta}")

    def step(self, n: int = 1) -> None:
        self.count += n
        if self._tty:
            print("\r" + self.line(), end="", file=self._stream, flush=True)
        elif self.count == self.total or self.count % max(1, self.total // 20) == 0:
            print(self.line(), file=self._stream, flush=True)

    def close(self) -> None:
        if self._tty:
            print(file=self._stream, flush=True)
