"""The mesh's queue while an evaluation asks it: the paper's Tables I-II report an "average queue size" beside
accuracy and latency, so each answer keeps the mean queue of the agents while it was in flight."""

from __future__ import annotations

import threading
import time
from bisect import bisect_right


class QueueWatch:
    """Every `period_s`, the mean over the online agents of their latest status's `queue_length` (tasks waiting
    plus in service). A sample-and-hold of the statuses, so a mean over the samples is a mean over time, not over
    status messages (which come faster when something changes)."""

    def __init__(self, statuses, period_s: float = 0.5, clock=time.monotonic):
        self._statuses = statuses  # () -> {device: Status}: the client's latest status per agent
        self._period_s = period_s
        self._clock = clock
        self._times: list[float] = []
        self._means: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, settle_s: float = 2.0) -> None:
        """Takes a first sample (waiting up to `settle_s` for the retained statuses to arrive), then one every
        period in a thread."""
        deadline = time.monotonic() + settle_s
        while not self.sample() and time.monotonic() < deadline:
            time.sleep(0.02)
        self._thread = threading.Thread(target=self._run, name="queue-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._period_s):
            self.sample()

    def sample(self) -> bool:
        lengths = [s.queue_length for s in self._statuses().values()
                   if s.online and isinstance(s.queue_length, int)]
        if lengths:
            with self._lock:
                self._times.append(self._clock())
                self._means.append(sum(lengths) / len(lengths))
        return bool(lengths)

    def mean_between(self, t0: float, t1: float) -> float | None:
        """The agents' mean queue over [t0, t1] (monotonic clock), each sample held until the next: the value seen
        at t0 counts too, so an answer shorter than a sampling period still gets one. None before any sample."""
        with self._lock:
            start = max(bisect_right(self._times, t0) - 1, 0)
            end = bisect_right(self._times, t1)
            times, means = self._times[start:end], self._means[start:end]
        if not times:
            return None
        if t1 <= t0 or len(times) == 1:
            return round(means[-1], 3)
        edges = [max(t, t0) for t in times] + [t1]
        weighted = sum(m * (edges[i + 1] - edges[i]) for i, m in enumerate(means))
        return round(weighted / (edges[-1] - edges[0]), 3) if edges[-1] > edges[0] else round(means[-1], 3)
