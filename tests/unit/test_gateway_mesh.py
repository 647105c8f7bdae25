"""The gateway's view of the mesh for its page: last status per agent and a bounded, windowed history."""

from edge_agent.gateway.backend import MeshWatch
from edge_agent.wire.messages import Status


def status(device, queue, p50=None, online=True):
    return Status(device=device, online=online, queue_length=queue, latency_p50_s=p50)


def test_last_status_wins_and_history_keeps_the_window():
    watch = MeshWatch(history_s=60, max_points=100)
    watch.add(status("a", 1, 2.0), now=1000)
    watch.add(status("b", 0), now=1030)
    watch.add(status("a", 3, 2.5), now=1050)
    watch.add(status("a", 2, 2.4), now=1075)  # the point at 1000 leaves the 60 s window
    snap = watch.snapshot(now=1080)
    assert [a["device"] for a in snap["agents"]] == ["a", "b"] and snap["agents"][0]["queue_length"] == 2
    assert [p["queue_length"] for p in snap["history"]["a"]] == [3, 2]
    assert snap["history"]["b"] == [{"t": 1030, "queue_length": 0, "latency_p50_s": None}]
    assert snap["history_s"] == 60 and snap["now"] == 1080


def test_history_is_bounded_per_agent():
    watch = MeshWatch(history_s=10_000, max_points=5)
    for i in range(20):
        watch.add(status("a", i), now=1000 + i)
    assert [p["queue_length"] for p in watch.snapshot(now=1020)["history"]["a"]] == [15, 16, 17, 18, 19]


def test_an_offline_agent_stays_in_the_table():
    watch = MeshWatch()
    watch.add(status("a", 1), now=1)
    watch.add(Status(device="a", online=False), now=2)
    assert watch.snapshot(now=3)["agents"] == [{"v": 1, "type": "status", "device": "a", "online": False}]
