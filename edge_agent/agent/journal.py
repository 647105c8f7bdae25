"""Accepted prompts, their progress and their replies in sqlite (WAL): the agent's memory across a crash.

- `prompts`: every accepted prompt until it is finished (with its deadline), so a restarted agent resumes it.
- `replies`: the outbox and the store of finished answers. A reply is written here in the same transaction that
  finishes its prompt, before it is published; it is marked sent when the broker acknowledged it; a restarted
  agent publishes again what was never acknowledged. Sent replies stay for `retention_s` (at most `keep`), so a
  repeated request id gets the same answer again instead of a second execution.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from ..wire.messages import LayerTrace, UserRequest

log = logging.getLogger(__name__)
SCHEMA = """
CREATE TABLE IF NOT EXISTS prompts (
    request_id TEXT PRIMARY KEY,
    request    TEXT NOT NULL,            -- UserRequest JSON
    layer      INTEGER NOT NULL DEFAULT 1,
    answers    TEXT NOT NULL DEFAULT '[]',
    trace      TEXT NOT NULL DEFAULT '[]',
    updated_at REAL NOT NULL DEFAULT (julianday('now'))
);
CREATE TABLE IF NOT EXISTS replies (
    request_id  TEXT PRIMARY KEY,
    topic       TEXT NOT NULL,
    correlation TEXT,                    -- hex of the MQTT v5 Correlation Data
    payload     BLOB NOT NULL,
    sent        INTEGER NOT NULL DEFAULT 0,
    finished_at REAL NOT NULL            -- wall clock
);
CREATE INDEX IF NOT EXISTS replies_by_age ON replies (sent, finished_at);
"""


@dataclass(frozen=True)
class JournalEntry:
    request: UserRequest
    layer: int
    answers: list[str]
    trace: list[LayerTrace]


@dataclass(frozen=True)
class UnreadableEntry:
    """A prompt row this version cannot read (an older or damaged row): answered with an error if it can be."""

    request_id: str
    raw: str
    problem: str


@dataclass(frozen=True)
class StoredReply:
    request_id: str
    topic: str
    correlation: str | None
    payload: bytes
    sent: bool


class Journal:
    """One sqlite file per agent, used from the agent's loop only.

    What correctness needs is written at once: an accepted prompt (before the broker's acknowledgement) and a
    finished prompt's reply (before it is published). What only saves work is batched, flushed in one transaction
    each agent tick (`flush`) and before any read: layer checkpoints (lost in a crash: the layer is run again) and
    "sent" marks (lost: the same reply is published once more). A write here costs about 0.1 ms."""

    def __init__(self, path: Path, *, retention_s: float = 3600.0, keep: int = 10000):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.retention_s, self.keep = retention_s, keep
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        self._db.executescript(SCHEMA)
        self._checkpoints: dict[str, tuple[int, str, str]] = {}
        self._sent: set[str] = set()

    # -- prompts --
    def accept(self, request: UserRequest) -> bool:
        """Record a new prompt; False when this request id is already journaled or answered."""
        if self.reply(request.request_id) is not None:
            return False
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO prompts (request_id, request) VALUES (?, ?)",
            (request.request_id, request.model_dump_json()),
        )
        return cursor.rowcount == 1

    def in_progress(self, request_id: str) -> bool:
        self.flush()
        return self._db.execute("SELECT 1 FROM prompts WHERE request_id = ?", (request_id,)).fetchone() is not None

    def checkpoint(self, request_id: str, layer: int, answers: list[str], trace: list[LayerTrace]) -> None:
        """The next layer starts from these answers (batched: written at the next flush)."""
        self._checkpoints[request_id] = (layer, json.dumps(answers), json.dumps([t.model_dump() for t in trace]))

    def flush(self) -> None:
        """Write the batched checkpoints and sent marks in one transaction."""
        if not self._checkpoints and not self._sent:
            return
        checkpoints, sent = self._checkpoints, self._sent
        self._checkpoints, self._sent = {}, set()
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "UPDATE prompts SET layer = ?, answers = ?, trace = ?, updated_at = julianday('now') "
                "WHERE request_id = ?", [(*row, rid) for rid, row in checkpoints.items()])
            self._db.executemany("UPDATE replies SET sent = 1 WHERE request_id = ?", [(rid,) for rid in sent])

    def unfinished(self) -> list[JournalEntry | UnreadableEntry]:
        self.flush()
        rows = self._db.execute(
            "SELECT request_id, request, layer, answers, trace FROM prompts ORDER BY rowid").fetchall()
        entries: list[JournalEntry | UnreadableEntry] = []
        for request_id, request, layer, answers, trace in rows:
            try:
                entries.append(JournalEntry(
                    request=UserRequest.model_validate_json(request), layer=int(layer), answers=json.loads(answers),
                    trace=[LayerTrace.model_validate(t) for t in json.loads(trace)],
                ))
            except (ValidationError, ValueError, TypeError) as exc:
                entries.append(UnreadableEntry(request_id=request_id, raw=request, problem=str(exc)[:200]))
        return entries

    # -- replies: outbox and store --
    def finish(self, request_id: str, topic: str, correlation: str | None, payload: bytes) -> None:
        """The prompt is done: its reply goes to the outbox in the same transaction."""
        self._checkpoints.pop(request_id, None)
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM prompts WHERE request_id = ?", (request_id,))
            self._db.execute(
                "INSERT OR REPLACE INTO replies (request_id, topic, correlation, payload, sent, finished_at) "
                "VALUES (?, ?, ?, ?, 0, ?)", (request_id, topic, correlation, payload, time.time()))

    def mark_sent(self, request_id: str) -> None:
        """The broker acknowledged the reply (batched: written at the next flush)."""
        self._sent.add(request_id)

    def unsent(self) -> list[StoredReply]:
        self.flush()
        rows = self._db.execute(
            "SELECT request_id, topic, correlation, payload FROM replies WHERE sent = 0 ORDER BY finished_at")
        return [StoredReply(r, t, c, bytes(p), False) for r, t, c, p in rows.fetchall()]

    def reply(self, request_id: str) -> StoredReply | None:
        self.flush()
        row = self._db.execute("SELECT topic, correlation, payload, sent FROM replies WHERE request_id = ?",
                               (request_id,)).fetchone()
        return None if row is None else StoredReply(request_id, row[0], row[1], bytes(row[2]), bool(row[3]))

    def prune(self, now: float | None = None) -> int:
        """Forget sent replies older than the retention, and beyond the newest `keep`."""
        now = time.time() if now is None else now
        self.flush()
        gone = self._db.execute("DELETE FROM replies WHERE sent = 1 AND finished_at < ?",
                                (now - self.retention_s,)).rowcount
        gone += self._db.execute(
            "DELETE FROM replies WHERE sent = 1 AND request_id NOT IN "
            "(SELECT request_id FROM replies ORDER BY finished_at DESC LIMIT ?)", (self.keep,)).rowcount
        return gone

    def counts(self) -> dict[str, int]:
        self.flush()
        prompts = self._db.execute("SELECT count(*) FROM prompts").fetchone()[0]
        unsent, stored = self._db.execute(
            "SELECT coalesce(sum(sent = 0), 0), count(*) FROM replies").fetchone()
        return {"prompts": prompts, "unsent_replies": unsent, "stored_replies": stored}

    def close(self) -> None:
        self.flush()
        self._db.close()
