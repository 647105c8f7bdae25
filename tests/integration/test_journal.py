"""The sqlite journal on a real file: what survives a process, and duplicates."""

import sqlite3

from edge_agent.journal import Journal
from edge_agent.protocol import LayerTrace, TraceEntry, UserRequest


def request(rid):
    return UserRequest(request_id=rid, device="a", prompt="p", reply_topic="t", layers=2, proposers=1,
                       max_new_tokens=8, temperature=0.7, received_at=1.0)


def test_accept_checkpoint_finish_and_reopen(tmp_path):
    path = tmp_path / "state" / "a.journal.sqlite"
    journal = Journal(path)
    assert journal.accept(request("r1")) and journal.accept(request("r2"))
    assert not journal.accept(request("r1"))  # a re-sent duplicate
    trace = [LayerTrace(layer=1, kind="propose", requested=2,
                        answered=[TraceEntry(device="a", outcome="ok", inference_s=0.1)])]
    journal.checkpoint("r1", 2, ["x", "y"], trace)
    journal.finish("r2")
    journal.close()

    reopened = Journal(path)
    entries = reopened.unfinished()
    assert [e.request.request_id for e in entries] == ["r1"]
    assert entries[0].layer == 2 and entries[0].answers == ["x", "y"] and entries[0].trace == trace
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
