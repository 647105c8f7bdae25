"""Provisioning without I/O: inventory checks, the bridge tree, and the text of every rendered file."""

from __future__ import annotations

import pytest
import tomllib

from edge_agent.config import parse_config
from edge_agent.errors import ConfigError
from edge_agent.provision import choose_tree, describe, in_place_layout, installed_layout, parse_inventory
from edge_agent.provision.render import (
    broker_usernames,
    render_acl,
    render_agent_toml,
    render_agent_unit,
    render_install_sh,
    render_mosquitto_conf,
    render_mosquitto_dropin,
)
from edge_agent.provision.secret import PasswordStore, hash_password, passwd_lines, verify_password
from tests.unit.provision_helpers import acl_rules


def inventory(**mesh):
    """Four boards whose links close a cycle a-b-d-c-a, plus one user app."""
    return parse_inventory({
        "mesh": {"name": "t", **mesh},
        "boards": [
            {"id": "a", "address": "10.0.0.1", "neighbours": ["b", "c"]},
            {"id": "b", "address": "10.0.0.2"},
            {"id": "c", "address": "10.0.0.3", "memory_max_mb": 512},
            {"id": "d", "address": "board-d.local", "port": 9883},
        ],
        "links": [{"between": ["b", "d"], "cost": 2}, {"between": ["c", "d"], "cost": 3}],
        "users": [{"name": "app", "devices": ["a", "b"]}, {"name": "ops"}],
    })


def problems(data):
    with pytest.raises(ConfigError) as caught:
        parse_inventory(data)
    return caught.value.problems


BOARDS = [{"id": "a", "address": "10.0.0.1"}, {"id": "b", "address": "10.0.0.2"}]


# -- inventory --

@pytest.mark.parametrize("data,fragment", [
    ({"boards": BOARDS + [{"id": "a", "address": "10.0.0.9"}]}, "duplicate board ids: a"),
    ({"boards": [{"id": "a", "address": "x", "neighbours": ["zz"]}]}, "unknown neighbour 'zz'"),
    ({"boards": [{"id": "a", "address": "x", "neighbours": ["a"]}]}, "itself"),
    ({"boards": BOARDS, "links": [{"between": ["a", "q"]}]}, "unknown board 'q'"),
    ({"boards": BOARDS, "links": [{"between": ["a", "a"]}]}, "joins a board to itself"),
    ({"boards": [{**b, "role": "hub"} for b in BOARDS]}, "at most one hub"),
    ({"boards": BOARDS, "users": [{"name": "a"}]}, "has the id of a board"),
    ({"boards": BOARDS, "users": [{"name": "u", "devices": ["q"]}]}, "unknown devices: q"),
    ({"boards": [{"id": "a", "address": "fd00::1"}]}, "IPv4 address or a DNS name"),
    ({"boards": [{"id": "a", "address": "h"}, {"id": "b", "address": "h"}]}, "share an address and port: h:8883"),
])
def test_inventory_cross_checks(data, fragment):
    assert any(fragment in message for _, _, message in problems(data))


@pytest.mark.parametrize("data,path", [
    ({"boards": [{"id": "a b", "address": "x"}]}, "boards.0.id"),
    ({"boards": [{"id": "a", "address": "x", "colour": 1}]}, "boards.0.colour"),
    ({"mesh": {"topic_root": "moa/#"}, "boards": BOARDS}, "mesh.topic_root"),
    ({"mesh": {"topic_root": "/moa"}, "boards": BOARDS}, "mesh.topic_root"),
    ({"boards": BOARDS, "links": [{"between": ["a", "b"], "cost": 0}]}, "links.0.cost"),
    ({"boards": []}, "boards"),
])
def test_inventory_errors_name_the_key_path(data, path):
    assert path in [p for p, _, _ in problems(data)]


def test_bad_value_is_reported_with_the_value():
    found = {path: value for path, value, _ in problems({"boards": [{"id": "a b", "address": "x"}]})}
    assert found["boards.0.id"] == "a b"


def test_neighbours_and_links_merge_one_link_per_pair():
    inv = inventory()
    pairs = [tuple(sorted(link.between)) for link in inv.all_links()]
    assert pairs == [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")]
    inv2 = parse_inventory({"boards": [{**BOARDS[0], "neighbours": ["b"]}, BOARDS[1]],
                            "links": [{"between": ["b", "a"], "cost": 7}]})
    (link,) = inv2.all_links()
    assert link.cost == 7


def test_port_defaults_follow_tls():
    assert inventory().mesh.listen_port == 8883
    assert inventory(tls=False).mesh.listen_port == 1883
    inv = inventory(port=1999)
    assert inv.port_of(inv.board("a")) == 1999 and inv.port_of(inv.board("d")) == 9883


# -- the tree --

def test_tree_leaves_out_the_link_that_closes_the_cycle():
    tree = choose_tree(inventory())
    assert sorted(tuple(sorted(l.between)) for l in tree.edges) == [("a", "b"), ("a", "c"), ("b", "d")]
    assert [tuple(sorted(l.between)) for l in tree.left_out] == [("c", "d")]
    assert len(tree.edges) == 3  # n - 1: a spanning tree


def test_preferred_link_wins_over_cost():
    data = {"boards": [{"id": i, "address": f"10.0.0.{n}"} for n, i in enumerate("abc", 1)],
            "links": [{"between": ["a", "b"], "cost": 1}, {"between": ["b", "c"], "cost": 1},
                      {"between": ["a", "c"], "cost": 9, "preferred": True}]}
    tree = choose_tree(parse_inventory(data))
    kept = sorted(tuple(sorted(l.between)) for l in tree.edges)
    assert ("a", "c") in kept and len(kept) == 2
    assert [tuple(sorted(l.between)) for l in tree.left_out] == [("b", "c")]  # ties broken by ids


def test_root_is_the_hub_or_the_centre():
    chain = {"boards": [{"id": i, "address": f"10.0.0.{n}"} for n, i in enumerate("abcde", 1)],
             "links": [{"between": [x, y]} for x, y in ("ab", "bc", "cd", "de")]}
    tree = choose_tree(parse_inventory(chain))
    assert tree.root == "c" and tree.parent == {"b": "c", "d": "c", "a": "b", "e": "d"}
    chain["boards"][0]["role"] = "hub"
    tree = choose_tree(parse_inventory(chain))
    assert tree.root == "a" and tree.parent["e"] == "d" and tree.subtree("c") == ["c", "d", "e"]


def test_a_mesh_that_falls_apart_is_refused():
    data = {"boards": [{"id": i, "address": f"10.0.0.{n}"} for n, i in enumerate("abcd", 1)],
            "links": [{"between": ["a", "b"]}, {"between": ["c", "d"]}]}
    with pytest.raises(ConfigError) as caught:
        choose_tree(parse_inventory(data))
    assert "{a, b}; {c, d}" in caught.value.problems[0][2]


def test_single_board_needs_no_links():
    tree = choose_tree(parse_inventory({"boards": [BOARDS[0]]}))
    assert tree.root == "a" and tree.parent == {} and tree.draw() == "a"


def test_describe_prints_tree_and_left_out_links():
    inv = inventory()
    text = describe(inv, choose_tree(inv))
    assert "root a" in text and "└── d  (cost 2)" in text
    assert "left out" in text and "c - d  (cost 3)" in text


# -- rendering --

def password_of(name):
    return f"pw-{name}"


def test_mosquitto_conf_bridges_only_to_the_parent():
    inv = inventory()
    tree = choose_tree(inv)
    root_conf = render_mosquitto_conf(inv, tree, inv.board("a"), installed_layout(), password_of)
    assert "connection " not in root_conf
    conf = render_mosquitto_conf(inv, tree, inv.board("d"), installed_layout(), password_of)
    # one link to the parent, two connections with disjoint topics: v5 for prompts and agents, 3.1.1 for answers
    assert conf.count("\nconnection ") == 2 and conf.count("\naddress 10.0.0.2:8883\n") == 2
    v5, v311 = conf.split("\nconnection edge-moa-d-to-b-answers\n")
    assert "\nbridge_protocol_version mqttv50\n" in v5 and "\nbridge_protocol_version mqttv311\n" in v311
    assert [line for line in v5.splitlines() if line.startswith("topic ")] == [
        "topic moa/v1/+/prompt both 1", "topic moa/v1/+/status both 1", "topic moa/v1/+/inbox/+ both 1"]
    assert [line for line in v311.splitlines() if line.startswith("topic ")] == ["topic moa/v1/+/answer/# both 1"]
    assert "\nremote_clientid bridge.d.answers\n" in v311 and "\nremote_username bridge.d\n" in v311
    for line in ("connection edge-moa-d-to-b", "address 10.0.0.2:8883",
                 "restart_timeout 1 5", "remote_username bridge.d", "remote_password pw-bridge.d",
                 "cleansession false", "bridge_cafile /etc/edge-moa/mosquitto/ca.crt", "bridge_insecure false",
                 "listener 9883", "allow_anonymous false", "require_certificate true",
                 "max_queued_messages 10000", "max_queued_bytes 33554432", "password_file /etc/edge-moa/mosquitto/passwd",
                 "acl_file /etc/edge-moa/mosquitto/acl", "persistence true", "user mosquitto", "set_tcp_nodelay true"):
        assert f"\n{line}\n" in conf, line
    # every limit is explained next to where it is set
    assert "7,643 of 50,000" in conf


def test_bridge_protocol_is_a_choice():
    inv = inventory()
    tree = choose_tree(inv)
    assert "\nbridge_protocol_version mqttv50\n" in render_mosquitto_conf(inv, tree, inv.board("d"), installed_layout(),
                                                                          password_of)
    inv = inventory(bridge_protocol="mqttv311")
    conf = render_mosquitto_conf(inv, tree, inv.board("d"), installed_layout(), password_of)
    assert "\nbridge_protocol_version mqttv311\n" in conf and "mqttv50" not in conf
    assert conf.count("\nconnection ") == 1 and "\ntopic moa/v1/# both 1\n" in conf


def test_mosquitto_conf_without_tls():
    inv = inventory(tls=False, bind="127.0.0.1")
    tree = choose_tree(inv)
    conf = render_mosquitto_conf(inv, tree, inv.board("b"), installed_layout(), password_of)
    assert "\nlistener 1883 127.0.0.1\n" in conf and "address 10.0.0.1:1883" in conf
    assert "cafile" not in conf and "certfile" not in conf and "require_certificate" not in conf


def test_agent_reaches_its_broker_on_the_bound_address():
    for bind, host in (("127.0.0.1", "127.0.0.1"), ("10.0.0.2", "10.0.0.2"), ("", "127.0.0.1"), ("0.0.0.0", "127.0.0.1")):
        inv = inventory(tls=False, bind=bind)
        text = render_agent_toml(inv, inv.board("b"), installed_layout())
        assert tomllib.loads(text)["mqtt"]["host"] == host


def test_in_place_layout_points_into_the_bundle(tmp_path):
    inv = inventory()
    conf = render_mosquitto_conf(inv, choose_tree(inv), inv.board("b"), in_place_layout(tmp_path), password_of)
    assert f"password_file {tmp_path}/mosquitto/passwd" in conf
    assert f"persistence_location {tmp_path}/state/mosquitto/" in conf


def test_acl_pins_each_agent_to_its_own_topics():
    inv = inventory()
    rules = acl_rules(render_acl(inv, choose_tree(inv)))
    assert rules["b"] == {
        "write moa/v1/b/status", "write moa/v1/b/answer/#", "write moa/v1/+/inbox/b",
        "read moa/v1/b/prompt", "read moa/v1/b/inbox/+", "read moa/v1/+/status",
    }


def test_acl_bridge_carries_only_its_subtree_upward():
    inv = inventory()
    rules = acl_rules(render_acl(inv, choose_tree(inv)))
    assert set(rules) == {"a", "b", "c", "d", "bridge.b", "bridge.c", "bridge.d", "app", "ops"}
    up_b = rules["bridge.b"]
    assert "read moa/v1/#" in up_b and "write moa/v1/+/prompt" in up_b
    for sender in ("b", "d"):
        assert {f"write moa/v1/{sender}/status", f"write moa/v1/{sender}/answer/#",
                f"write moa/v1/+/inbox/{sender}"} <= up_b
    assert not any("/a/" in rule or rule.endswith("/a") or "/c/" in rule for rule in up_b)
    assert "write moa/v1/+/inbox/b" not in rules["bridge.d"]


def test_acl_user_apps_reach_only_their_devices():
    inv = inventory()
    rules = acl_rules(render_acl(inv, choose_tree(inv)))
    assert rules["app"] == {"write moa/v1/a/prompt", "read moa/v1/a/answer/#", "read moa/v1/a/status",
                            "write moa/v1/b/prompt", "read moa/v1/b/answer/#", "read moa/v1/b/status"}
    assert rules["ops"] == {"write moa/v1/+/prompt", "read moa/v1/+/answer/#", "read moa/v1/+/status"}


def test_each_broker_knows_its_agent_its_children_bridges_and_the_apps():
    inv = inventory()
    tree = choose_tree(inv)
    assert broker_usernames(inv, tree, inv.board("a")) == ["a", "bridge.b", "bridge.c", "app", "ops"]
    assert broker_usernames(inv, tree, inv.board("d")) == ["d", "app", "ops"]
    assert len(broker_usernames(inv, tree)) == 4 + 3 + 2


@pytest.mark.parametrize("tls,mutual", [(True, True), (True, False), (False, False)])
def test_agent_toml_is_a_valid_agent_config(tls, mutual):
    inv = inventory(tls=tls, mutual_tls=mutual, engine="synthetic", layers=2, proposers=3)
    text = render_agent_toml(inv, inv.board("c"), installed_layout())
    config = parse_config(tomllib.loads(text))
    assert config.agent.device_id == "c" and config.mqtt.username == "c"
    assert config.mqtt.port == (8883 if tls else 1883) and config.mqtt.host == "127.0.0.1"
    assert str(config.mqtt.password_file) == "/run/credentials/edge-moa-agent.service/mqtt-password"
    assert (config.mqtt.tls_ca_file is not None) == tls
    assert (config.mqtt.tls_key_file is not None) == mutual
    assert config.queue.memory_limit_mb == 512
    assert (config.moa.layers, config.moa.proposers, config.engine.kind) == (2, 3, "synthetic")


def test_agent_unit_has_the_required_settings():
    inv = inventory()
    unit = render_agent_unit(inv, inv.board("c"))
    for line in ("Wants=mosquitto.service network-online.target", "After=mosquitto.service network-online.target",
                 "Restart=on-failure", "StartLimitBurst=5", "MemoryMax=512M", "User=edge-moa", "ProtectSystem=strict",
                 "NoNewPrivileges=true", "PrivateTmp=true", "StateDirectory=edge-moa",
                 "LoadCredential=mqtt-password:/etc/edge-moa/credentials/mqtt-password",
                 "LoadCredential=tls-key:/etc/edge-moa/credentials/tls-key",
                 "ExecStart=/opt/edge-moa/venv/bin/edge-moa agent --config /etc/edge-moa/agent.toml",
                 "Environment=EDGE_MOA_MODEL_DIR=/opt/edge-moa/models"):
        assert f"\n{line}\n" in unit, line
    assert "tls-key" not in render_agent_unit(inventory(tls=False), inv.board("c"))


def test_mosquitto_dropin_and_install_script():
    inv = inventory()
    dropin = render_mosquitto_dropin(inv, inv.board("a"))
    assert "ExecStart=\nExecStart=/usr/sbin/mosquitto -c /etc/edge-moa/mosquitto/mosquitto.conf\n" in dropin
    script = render_install_sh(inv, inv.board("a"))
    assert script.startswith("#!/bin/sh\n") and "set -eu" in script
    for fragment in ("useradd --system", "python3 -m venv", "systemctl enable mosquitto.service edge-moa-agent.service",
                     "install -m 0600 \"$here/credentials/mqtt-password\"", "pip\" install --upgrade"):
        assert fragment in script, fragment


# -- passwords --

def test_hash_matches_mosquitto_passwd():
    # produced by `mosquitto_passwd -b pw alice secret` (Mosquitto 2.0.11)
    made_by_mosquitto = ("$7$101$CtITWb/xzAHpUmtx$Aj9+26cJstvB3VaeH5CV0fha+dSys1wfnRopQjuzezmulhMdRLgTpkcLQugtNfkuTy1D"
                         "ymQnn/sqQU5YGciIng==")
    assert verify_password("secret", made_by_mosquitto)
    assert not verify_password("Secret", made_by_mosquitto)
    assert verify_password("x y", hash_password("x y")) and not verify_password("x", "$6$junk")


def test_passwd_lines_keep_matching_hashes(tmp_path):
    store = PasswordStore(tmp_path / "never-written")
    first = passwd_lines(store, ["a", "b"], None)
    assert passwd_lines(store, ["a", "b"], first) == first
    store._passwords["b"] = "rotated"
    again = passwd_lines(store, ["a", "b"], first)
    assert again.splitlines()[0] == first.splitlines()[0] and again.splitlines()[1] != first.splitlines()[1]
