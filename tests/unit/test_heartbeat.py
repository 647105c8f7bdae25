"""The status heartbeat of a large mesh (issue 14 item 5): slower with n, advertised, and peers wait for it."""

from __future__ import annotations

import asyncio
import json

import pytest

from edge_agent.agent.peers import PeerTable, status_interval_s
from edge_agent.mqtt.memory import MemoryBroker
from edge_agent.wire.messages import Status
from edge_agent.wire.topics import Topics
from tests.unit.agent_harness import ROOT, kill, make_agent, started, stopped, wait_for


def test_interval_is_the_heartbeat_up_to_scale_from_agents_then_grows_with_n():
    assert status_interval_s(1.0, 4, 16) == 1.0
    assert status_interval_s(1.0, 16, 16) == 1.0
    assert status_interval_s(1.0, 64, 16) == 4.0
    assert status_interval_s(0.25, 48, 16) == pytest.approx(0.75)
    # mesh-wide statuses per second: n^2 / interval = n x scale_from / heartbeat, linear past scale_from
    for n in (32, 64, 128):
        assert n * n / status_interval_s(1.0, n, 16) == pytest.approx(16 * n)


def test_a_peer_is_gone_after_three_of_its_own_intervals_and_never_later_than_ten_timeouts():
    table = PeerTable("me", timeout_s=10.0)
    table.update(Status(device="slow", online=True, heartbeat_s=8.0), now=0.0)
    table.update(Status(device="old", online=True), now=0.0)  # an agent that does not advertise its interval
    table.update(Status(device="liar", online=True, heartbeat_s=86400.0), now=0.0)
    table.update(Status(device="fast", online=True, heartbeat_s=0.25), now=0.0)
    assert table.alive(9.0) == ["fast", "liar", "old", "slow"]
    assert table.alive(20.0) == ["liar", "slow"]  # 3 x 8 s = 24 s for slow; fast and old: timeout_s
    assert table.alive(25.0) == ["liar"]
    assert table.alive(101.0) == []  # capped at 10 x timeout_s
    assert table.update(Status(device="slow", online=False), now=1.0) is True  # a will still ends it at once


def test_agents_advertise_their_slower_interval_and_still_see_a_death_at_once(tmp_path):
    async def scenario():
        broker = MemoryBroker()
        agents = [make_agent(broker, d, tmp_path, agent={"heartbeat_scale_from": 2}) for d in ("a", "b", "c")]
        await started(*agents)
        topics = Topics(ROOT)

        def advertised(device: str) -> float | None:
            retained = broker.subscribed(None, topics.status(device))
            return json.loads(retained[0].payload).get("heartbeat_s") if retained else None

        # 3 agents, scale_from 2: 0.2 s x 3 / 2
        await wait_for(lambda: all(advertised(d) == pytest.approx(0.3) for d in "abc"), what="slower statuses")
        assert agents[0]._status_interval_s() == pytest.approx(0.3)
        kill(agents[2])  # its will: offline at once, not three slow beats later
        await wait_for(lambda: agents[0]._alive() == ["b"] and agents[1]._alive() == ["a"], timeout_s=2.0,
                       what="the death seen")
        await wait_for(lambda: advertised("a") == pytest.approx(0.2), what="the interval back to heartbeat_s")
        await stopped(*agents[:2])

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_small_mesh_keeps_its_heartbeat(tmp_path):
    async def scenario():
        broker = MemoryBroker()
        agents = [make_agent(broker, d, tmp_path) for d in ("a", "b", "c")]
        await started(*agents)
        assert [a._status_interval_s() for a in agents] == [0.2] * 3
        assert agents[0].status().heartbeat_s == 0.2
        await stopped(*agents)

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_statuses_reach_agents_at_qos0_and_other_traffic_at_qos1(tmp_path):
    async def scenario():
        broker = MemoryBroker()
        agents = [make_agent(broker, d, tmp_path) for d in ("a", "b")]
        seen: list[tuple[str, int]] = []
        original = agents[0]._on_raw

        def spy(message):
            seen.append((message.topic, message.qos))
            original(message)
        agents[0]._on_raw = spy
        await started(*agents)
        await asyncio.sleep(0.5)  # a few heartbeats
        topics = Topics(ROOT)
        statuses = [q for t, q in seen if t == topics.status("b")]
        assert statuses and set(statuses) == {0}
        assert broker.unacked("edge-moa-agent-a") == []
        await stopped(*agents)

    asyncio.run(asyncio.wait_for(scenario(), 60))
