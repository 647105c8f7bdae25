"""Memory-aware admission and FCFS accounting, from numbers rather than from this machine's memory."""

import random

from edge_agent.agent.memory import MB, MemoryReading, queue_cap_bytes, task_charge_bytes
from edge_agent.agent.peers import PeerTable, choose_peers
from edge_agent.agent.prompt_queue import PromptQueue, QueuedTask, admit
from edge_agent.engine import ChatMessage, GenerationRequest
from edge_agent.wire.messages import Status


def task(task_id, charge):
    return QueuedTask(task_id=task_id, request_id="r", layer=1, origin="a",
                      generation=GenerationRequest(messages=(ChatMessage("user", "x"),)), charge_bytes=charge)


def test_cap_uses_available_memory_minus_reserve():
    reading = MemoryReading(available_bytes=1000 * MB, rss_bytes=300 * MB, limit_bytes=None)
    assert queue_cap_bytes(reading, fraction=0.5, reserve_bytes=200 * MB) == 400 * MB


def test_cap_respects_a_memory_limit_above_our_rss():
    reading = MemoryReading(available_bytes=8000 * MB, rss_bytes=300 * MB, limit_bytes=512 * MB)
    assert queue_cap_bytes(reading, fraction=1.0, reserve_bytes=12 * MB) == 200 * MB
    squeezed = MemoryReading(available_bytes=8000 * MB, rss_bytes=600 * MB, limit_bytes=512 * MB)
    assert queue_cap_bytes(squeezed, fraction=1.0, reserve_bytes=0) == 0


def test_charge_is_text_plus_kv_cache():
    # 30 layers x 2 x 3 kv heads x 64 dims x 4 bytes = 46080 bytes per token
    assert task_charge_bytes(100, 50, 78, 46080) == 100 + 46080 * 128


def test_admission():
    assert admit(queued_bytes=0, queued_tasks=0, charge_bytes=10, cap_bytes=10, max_tasks=5)
    assert not admit(queued_bytes=5, queued_tasks=1, charge_bytes=6, cap_bytes=10, max_tasks=5)
    assert not admit(queued_bytes=0, queued_tasks=5, charge_bytes=1, cap_bytes=10, max_tasks=5)


def test_bytes_follow_tasks_until_released_once():
    q = PromptQueue()
    q.add(task("t1", 10))
    q.add(task("t2", 20))
    assert (len(q), q.bytes) == (2, 30)
    assert q.release("t1").task_id == "t1"
    assert (len(q), q.bytes) == (1, 20)
    assert q.release("t1") is None  # a second release gives nothing back twice
    assert (len(q), q.bytes) == (1, 20)
    assert "t2" in q and "t1" not in q


def test_choose_peers_distinct_and_bounded():
    rng = random.Random(0)
    assert sorted(choose_peers(["b", "c"], 5, rng)) == ["b", "c"]
    assert choose_peers(["b", "c"], 0, rng) == []
    picked = choose_peers(["a", "b", "c", "d"], 2, rng, exclude={"a"})
    assert len(set(picked)) == 2 and "a" not in picked


def test_peer_table_alive_and_gone():
    table = PeerTable("a", timeout_s=5.0)
    table.update(Status(device="a", online=True), now=0.0)
    table.update(Status(device="b", online=True), now=0.0)
    table.update(Status(device="c", online=True), now=0.0)
    assert table.alive(now=1.0) == ["b", "c"]
    assert table.update(Status(device="c", online=False), now=2.0) is True
    assert table.alive(now=2.0) == ["b"]
    assert table.alive(now=6.0) == []


def test_expected_wait_uses_fresh_queue_lengths():
    table = PeerTable("a", timeout_s=5.0)
    table.update(Status(device="b", online=True, queue_length=2, alpha_s=0.5), now=0.0)
    assert table.expected_wait_s("b") == 1.5
    table.note_sent("b")
    assert table.expected_wait_s("b") == 2.0
    table.note_queue("b", 0)
    assert table.expected_wait_s("b") == 0.5
    assert table.expected_wait_s("zz") == float("inf")
