"""The scale run in small (issue 14 item 5): a bridge tree of real Mosquitto brokers, agents spread over it,
every prompt counted, including prompts nobody serves (which must count as lost, never accepted)."""

from __future__ import annotations

import pytest

from edge_agent.local.broker_tree import BrokerTree
from edge_agent.stability.scale import ScaleConfig, run_scale


def test_tree_shape_and_hops():
    tree = BrokerTree(7, fanout=2)  # not started: the shape only
    assert tree.parent == {1: 0, 2: 0, 3: 1, 4: 1, 5: 2, 6: 2}
    assert [tree.depth(i) for i in range(7)] == [0, 1, 1, 2, 2, 2, 2]
    assert tree.hops(3, 4) == 2 and tree.hops(3, 6) == 4 and tree.hops(0, 5) == 2 and tree.hops(2, 2) == 0
    conf = tree.brokers[3].conf_path.read_text()
    assert conf.count("connection ") == 2 and f"127.0.0.1:{tree.ports[1]}" in conf  # two connections to its parent
    assert "connection " not in tree.brokers[0].conf_path.read_text()


@pytest.mark.slow
def test_every_prompt_across_a_bridge_tree_is_counted(tmp_path):
    cfg = ScaleConfig(agents=5, brokers=3, alpha_s=0.05, load=0.5, duration_s=6.0, drain_s=10.0, late_s=1.0,
                      idle_s=0.0, probes=3, ghost_prompts=2, workdir=str(tmp_path))
    report = run_scale(cfg, progress=lambda line: None)
    assert report["tree"] == {"brokers": 3, "links": 2, "bridge_connections": 4, "depth": 1}
    assert set(report["hop_latency_s"]) == {"0", "1"}
    scheduled = report["prompts_scheduled"]
    assert scheduled > 10
    assert report["prompts"] == scheduled + 2  # every prompt the brokers acknowledged, the ghosts too
    assert report["answered"] == scheduled and report["errored"] == 0 and report["duplicated"] == 0
    assert report["lost"] == 2 and report["never_answered"] == 2 and report["late"] == 0
    assert report["unanswered_journal"] == {"no_journal": 2}  # no agent ever accepted them
    assert report["answered_by_end_of_drain"] == scheduled
    assert report["agent_tracebacks"] == 0
    # every broker carried traffic while the prompts ran (agents on all three)
    rates = report["load"]["brokers"]["per_broker"]
    assert len(rates) == 3
