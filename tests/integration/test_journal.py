"""The sqlite journal on a real file: what survives a process, duplicates, the outbox and its retention."""

import sqlite3

from edge_agent.agent.journal import Journal, JournalEntry, UnreadableEntry
from edge_agent.wire.messages import LayerTrace, TraceEntry, UserRequest


def request(rid):
    return UserRequest(request_id=rid, device="a", prompt="p", reply_topic="t", layers=2, proposers=1,
                       max_new_tokens=8, temperature=0.7, received_at=1.0, deadline_at=901.0)


def test_accept_checkpoint_finish_and_reopen(tmp_path):
    path = tmp_path / "state" / "a.journal.sqlite"
    journal = Journal(path)
    assert journal.accept(request("r1")) and journal.accept(request("r2"))
    assert not journal.accept(request("r1"))  # a re-sent duplicate
    trace = [LayerTrace(layer=1, kind="propose", requested=2,
                        answered=[TraceEntry(device="a", outcome="ok", inference_s=0.1)])]
    journal.checkpoint("r1", 2, ["x", "y"], trace)
    journal.finish("r2", "t", "0102", b'{"answer": 2}')
    assert not journal.accept(request("r2"))  # answered: a repeat is served from the store, not run again
    journal.close()

    reopened = Journal(path)
    entries = reopened.unfinished()
    assert [e.request.request_id for e in entries] == ["r1"]
    assert entries[0].layer == 2 and entries[0].answers == ["x", "y"] and entries[0].trace == trace
    assert entries[0].request.deadline_at == 901.0
    assert [(r.request_id, r.correlation, r.payload) for r in reopened.unsent()] == [("r2", "0102", b'{"answer": 2}')]
    reopened.mark_sent("r2")
    assert reopened.unsent() == [] and reopened.reply("r2").sent
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sent_replies_are_kept_for_the_retention_then_forgotten(tmp_path):
    journal = Journal(tmp_path / "j.sqlite", retention_s=100.0, keep=2)
    for i in range(4):
        journal.finish(f"r{i}", "t", None, b"x")
    journal.mark_sent("r0")
    assert journal.prune() == 1  # beyond the newest 2, and sent: r0 only (unsent replies are never pruned)
    assert journal.reply("r0") is None and journal.reply("r1") is not None
    for i in range(1, 4):
        journal.mark_sent(f"r{i}")
    journal.prune(now=10**10)
    assert journal.counts()["stored_replies"] == 0


def test_rows_of_an_older_version_load_or_come_back_unreadable(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)  # the schema of version 0.1 (no replies table, no deadline in the request)
    db.executescript("CREATE TABLE prompts (request_id TEXT PRIMARY KEY, request TEXT NOT NULL, "
                     "layer INTEGER NOT NULL DEFAULT 1, answers TEXT NOT NULL DEFAULT '[]', "
                     "trace TEXT NOT NULL DEFAULT '[]', updated_at REAL NOT NULL DEFAULT (julianday('now')));")
    old = request("old").model_dump(exclude={"deadline_at", "stream"})
    import json

    db.execute("INSERT INTO prompts (request_id, request) VALUES ('old', ?)", (json.dumps(old),))
    db.execute("INSERT INTO prompts (request_id, request) VALUES ('bad', '{\"request_id\": 5}')")
    db.commit()
    db.close()
    entries = Journal(path).unfinished()
    assert isinstance(entries[0], JournalEntry) and entries[0].request.deadline_at is None
    assert isinstance(entries[1], UnreadableEntry) and entries[1].request_id == "bad"


def test_checkpoints_and_sent_marks_are_batched_until_a_flush(tmp_path):
    path = tmp_path / "j.sqlite"
    journal = Journal(path)
    journal.accept(request("r1"))  # written at once: the broker's acknowledgement waits for it
    journal.finish("r0", "t", None, b"x")  # written at once: the reply is stored before it is published
    journal.checkpoint("r1", 2, ["a"], [])
    journal.mark_sent("r0")
    other = sqlite3.connect(path)
    assert other.execute("SELECT layer FROM prompts WHERE request_id = 'r1'").fetchone() == (1,)
    assert other.execute("SELECT sent FROM replies WHERE request_id = 'r0'").fetchone() == (0,)
    journal.flush()
    assert other.execute("SELECT layer FROM prompts WHERE request_id = 'r1'").fetchone() == (2,)
    assert other.execute("SELECT sent FROM replies WHERE request_id = 'r0'").fetchone() == (1,)
