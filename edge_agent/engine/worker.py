"""The inference thread: the one owner of the engine, serving submitted jobs FCFS, up to `max_batch` at once.

Engines with `continuous` and `open_batch` (OnnxEngine on GQA graphs, SyntheticEngine) are served continuously: a job submitted while others
decode joins them at the next step, a finished one is answered at once and frees its row (batch.py); with
`max_batch = 1` that is the paper's FCFS queue. Other engines get static batches of the jobs waiting.

A `ScoreJob` (the agent's `select` ranking: prefills that read label probabilities, no decode) takes its turn in
the same FCFS order: it runs alone between two steps of the batch, whose rows then go on decoding where they
were; it counts as one served task in the busy time and task count alpha is computed from.

The agent's loop submits jobs from its own thread and hears back through each job's callbacks, which run on this
thread and must only hand the outcome over (e.g. `loop.call_soon_threadsafe`). A failing job never stops the
thread: its exception is its outcome.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .base import Engine, Generation, GenerationRequest

log = logging.getLogger(__name__)
Outcome = Generation | Exception


@dataclass(frozen=True)
class Job:
    key: str  # the caller's id for it (a task id), for logs
    request: GenerationRequest
    on_done: Callable[[Outcome], None]
    on_delta: Callable[[str], None] | None = None  # streamed text pieces; only for engines that stream


@dataclass(frozen=True)
class ScoreJob:
    """A job that is not a generation: `run(engine)` on the inference thread, its return value (or the
    exception it raised) handed to `on_done`."""

    key: str
    run: Callable[[Engine], object]
    on_done: Callable[[object], None]


class InferenceWorker:
    """FCFS service of jobs on one thread. With `max_batch` > 1 up to that many jobs decode together, which
    raises the service rate to b / alpha(b) (DESIGN.md sec. 4). A job's Generation.seconds is the time from its
    joining the batch to its end."""

    def __init__(self, engine: Engine, *, max_batch: int = 1, name: str = "inference"):
        self.engine = engine
        self.max_batch = max(1, min(max_batch, getattr(engine, "max_batch", 1)))
        self._jobs: queue.SimpleQueue[Job | ScoreJob | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._waiting = 0
        self._running = 0
        self._busy_since: float | None = None
        # the engine's busy time and the jobs it finished: alpha per task is their ratio, batched or not
        self.busy_total_s = 0.0
        self.served_total = 0
        self._batch = None  # the continuous batch, owned by the inference thread (read for kv_bytes only)
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    # -- caller side (any thread) --
    def submit(self, job: Job | ScoreJob) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("inference worker is closed")
            self._waiting += 1
        self._jobs.put(job)

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def running(self) -> int:
        return self._running

    @property
    def kv_bytes(self) -> int:
        """KV memory the running batch holds now (0 when idle or for engines without continuous batching)."""
        batch = self._batch
        return getattr(batch, "kv_bytes", 0) if batch is not None else 0

    def busy_for_s(self, now: float | None = None) -> float:
        """How long the current engine call has run (0 when idle): a hung engine shows here."""
        since = self._busy_since
        return 0.0 if since is None else (time.monotonic() if now is None else now) - since

    def close(self, timeout_s: float = 5.0) -> None:
        with self._lock:
            self._closed = True
        self._jobs.put(None)
        self._thread.join(timeout_s)

    # -- the inference thread --
    def _serve(self) -> None:
        if getattr(self.engine, "continuous", False) and callable(getattr(self.engine, "open_batch", None)):
            self._serve_continuously()
        else:
            self._serve_static()

    def _serve_continuously(self) -> None:
        batch = self._batch = self.engine.open_batch(max_rows=self.max_batch)
        stopping = False
        while not (stopping and not len(batch)):
            while not stopping and batch.free_rows > 0:
                try:  # block for the first job only when nothing runs
                    job = self._jobs.get() if not len(batch) else self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                with self._lock:
                    self._waiting -= 1
                if isinstance(job, ScoreJob):  # its turn: alone, between two steps of the batch
                    self._score(job, decoding=len(batch))
                    continue
                try:
                    batch.add(job.request, tag=job, on_delta=job.on_delta)
                except Exception as exc:  # noqa: BLE001  # this request alone is bad (too large, untokenizable)
                    self._deliver(job, exc)
            if not len(batch):
                continue
            self._running = len(batch)
            self._busy_since = started = time.monotonic()
            try:
                finished = batch.step()
            except Exception as exc:  # the batch fails; the thread goes on serving
                log.exception("a batch step failed")
                finished = [(job, exc) for job in batch.drop_all()]
            finally:
                self._busy_since = None
                self.busy_total_s += time.monotonic() - started
            self._running = len(batch)
            self.served_total += len(finished)
            for job, outcome in finished:
                self._deliver(job, outcome)

    def _score(self, job: ScoreJob, decoding: int = 0) -> None:
        self._running = decoding + 1
        self._busy_since = started = time.monotonic()
        try:
            outcome = job.run(self.engine)
        except Exception as exc:  # noqa: BLE001  # this job alone fails; its caller hears of it
            outcome = exc
        finally:
            self._busy_since = None
            self._running = decoding
            self.busy_total_s += time.monotonic() - started
        self.served_total += 1
        self._deliver(job, outcome)

    @staticmethod
    def _deliver(job: Job | ScoreJob, outcome: object) -> None:
        try:
            job.on_done(outcome)
        except Exception:  # a caller's bug must not stop the thread that serves every other job
            log.exception("on_done of job %s failed", job.key)

    def _serve_static(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if isinstance(job, ScoreJob):
                with self._lock:
                    self._waiting -= 1
                self._score(job)
                continue
            batch, scores = [job], []
            while len(batch) < self.max_batch:
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._jobs.put(None)  # stop after this batch
                    break
                if isinstance(more, ScoreJob):  # it waited beside this batch: it runs right after it
                    scores.append(more)
                    break
                batch.append(more)
            with self._lock:
                self._waiting -= len(batch) + len(scores)
                self._running = len(batch)
            self._busy_since = started = time.monotonic()
            try:
                outcomes = self._run(batch)
            finally:
                self._busy_since = None
                self._running = 0
                self.busy_total_s += time.monotonic() - started
            self.served_total += len(batch)
            for item, outcome in zip(batch, outcomes):
                self._deliver(item, outcome)
            for item in scores:
                self._score(item)

    def _run(self, batch: list[Job]) -> list[Outcome]:
        try:
            if len(batch) == 1:
                job = batch[0]
                if job.on_delta is not None and getattr(self.engine, "streams", False):
                    return [self.engine.generate(job.request, on_delta=job.on_delta)]
                return [self.engine.generate(job.request)]
            return list(self.engine.generate_batch([j.request for j in batch]))
        except Exception as exc:  # noqa: BLE001  # the engine must not take the thread down; callers hear of it
            return [exc] * len(batch)
