"""Accepted user prompts and their progress in sqlite (WAL), so a restarted agent resumes and answers them."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from .protocol import LayerTrace, UserRequest

SCHEMA = """
CREATE TABLE IF NOT EXISTS prompts (
    request_id TEXT PRIMARY KEY,
    request    TEXT NOT NULL,            -- UserRequest JSON
    layer      INTEGER NOT NULL DEFAULT 1,
    answers    TEXT NOT NULL DEFAULT '[]',
    trace      TEXT NOT NULL DEFAULT '[]',
    updated_at REAL NOT NULL DEFAULT (julianday('now'))
);
"""


@dataclass(frozen=True)
class JournalEntry:
    request: UserRequest
    layer: int
    answers: list[str]
    trace: list[LayerTrace]


class Journal:
    """One sqlite file per agent. Written on the agent loop only: accept, each finished layer, the end."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        self._db.executescript(SCHEMA)

    def accept(self, request: UserRequest) -> bool:
        """Record a new prompt; False when this request id is already journaled (a re-sent duplicate)."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO prompts (request_id, request) VALUES (?, ?)",
            (request.request_id, request.model_dump_json()),
        )
        return cursor.rowcount == 1

    def checkpoint(self, request_id: str, layer: int, answers: list[str], trace: list[LayerTrace]) -> None:
        self._db.execute(
            "UPDATE prompts SET layer = ?, answers = ?, trace = ?, updated_at = julianday('now') "
            "WHERE request_id = ?",
            (layer, json.dumps(answers), json.dumps([t.model_dump() for t in trace]), request_id),
        )

    def finish(self, request_id: str) -> None:
        self._db.execute("DELETE FROM prompts WHERE request_id = ?", (request_id,))

    def unfinished(self) -> list[JournalEntry]:
        rows = self._db.execute("SELECT request, layer, answers, trace FROM prompts ORDER BY rowid").fetchall()
        return [
            JournalEntry(
                request=UserRequest.model_validate_json(request),
                layer=layer,
                answers=json.loads(answers),
                trace=[LayerTrace.model_validate(t) for t in json.loads(trace)],
            )
            for request, layer, answers, trace in rows
        ]

    def close(self) -> None:
        self._db.close()
