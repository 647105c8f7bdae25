"""The emulated fleet's plan: names and addresses for namespaces and links, and the inventory it provisions."""

from __future__ import annotations

from pathlib import Path

from edge_agent.provision import parse_inventory
from edge_agent.provision.fleet import OPS_USER, emulated_inventory, plan


def inventory():
    return parse_inventory({
        "mesh": {"bind": "192.168.1.1"},
        "boards": [{"id": "pi-a", "address": "192.168.1.1", "neighbours": ["pi-b", "pi-c"], "role": "hub"},
                   {"id": "pi-b", "address": "192.168.1.2", "neighbours": ["pi-c"], "port": 9000},
                   {"id": "pi-c", "address": "192.168.1.3"}],
        "links": [{"between": ["pi-b", "pi-c"], "cost": 9}],
    })


def test_plan_names_and_addresses():
    state = plan(inventory(), Path("/tmp/x"), "synthetic", fleet_id="beef")
    assert state.ns("pi-a") == "emoa-beef-pi-a" and state.ns("ops") == "emoa-beef-ops"
    assert [state.address(b) for b in ("pi-a", "pi-b", "pi-c")] == ["10.200.0.1", "10.200.0.2", "10.200.0.3"]
    assert state.ports == {"pi-a": 8883, "pi-b": 9000, "pi-c": 8883}
    links = {(link.a, link.b): link for link in state.links}
    assert set(links) == {("pi-a", "pi-b"), ("pi-a", "pi-c"), ("pi-b", "pi-c")}
    assert all(len(link.veth_a) <= 15 and len(link.veth_b) <= 15 for link in state.links)  # IFNAMSIZ
    assert links[("pi-a", "pi-b")].child == "pi-b" and links[("pi-a", "pi-b")].parent == "pi-a"
    assert links[("pi-b", "pi-c")].child is None  # left out of the tree: no bridge on it
    assert len({link.ip_a for link in state.links} | {link.ip_b for link in state.links}) == 6


def test_emulated_inventory_uses_fleet_addresses_and_adds_the_operator():
    inv = inventory()
    state = plan(inv, Path("/tmp/x"), "synthetic", fleet_id="beef")
    emulated = emulated_inventory(inv, state)
    assert [b.address for b in emulated.boards] == ["10.200.0.1", "10.200.0.2", "10.200.0.3"]
    assert emulated.mesh.bind == "" and emulated.mesh.engine == "synthetic"
    assert [u.name for u in emulated.users] == [OPS_USER]
    assert emulated.port_of(emulated.board("pi-b")) == 9000
