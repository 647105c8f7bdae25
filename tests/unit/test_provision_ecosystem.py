"""Provisioning of the gateway, metrics and Home Assistant discovery: inventory options into bundles, ACL, units."""

from __future__ import annotations

import pytest
import tomllib

from edge_agent.config import parse_config
from edge_agent.errors import ConfigError
from edge_agent.provision import choose_tree, installed_layout, parse_inventory
from edge_agent.provision.render import (
    broker_usernames,
    render_acl,
    render_agent_toml,
    render_gateway_unit,
    render_install_sh,
    render_mosquitto_conf,
)
from tests.unit.provision_helpers import acl_rules


def inventory(boards: dict | None = None, **mesh):
    """Boards a (root), b under a, c under b; a user app `ha` for Home Assistant."""
    extra = boards or {}
    return parse_inventory({
        "mesh": {"name": "t", **mesh},
        "boards": [
            {"id": "a", "address": "10.0.0.1", "neighbours": ["b"], "role": "hub", **extra.get("a", {})},
            {"id": "b", "address": "10.0.0.2", "neighbours": ["c"], **extra.get("b", {})},
            {"id": "c", "address": "10.0.0.3", **extra.get("c", {})},
        ],
        "users": [{"name": "ha", "devices": ["*"]}, {"name": "app", "devices": ["a"]}],
    })


def agent_config(inv, board):
    return parse_config(tomllib.loads(render_agent_toml(inv, inv.board(board), installed_layout())))


def test_everything_is_off_by_default():
    inv = inventory()
    config = agent_config(inv, "a")
    assert not config.metrics.enabled and not config.home_assistant.enabled
    rules = acl_rules(render_acl(inv, choose_tree(inv)))
    assert not any(name.startswith("gateway.") for name in rules)
    assert not any("homeassistant" in rule for user_rules in rules.values() for rule in user_rules)
    assert "gateway." not in " ".join(broker_usernames(inv, choose_tree(inv)))
    script = render_install_sh(inv, inv.board("a"))
    assert "systemctl enable edge-moa-gateway.service" not in script
    assert "systemctl disable --now edge-moa-gateway.service" in script  # a gateway turned off is stopped
    assert "homeassistant" not in render_mosquitto_conf(inv, choose_tree(inv), inv.board("b"), installed_layout(),
                                                        lambda name: "pw")


def test_metrics_from_the_mesh_and_a_board_override():
    inv = inventory({"c": {"metrics": False}}, metrics=True, metrics_port=9500, metrics_bind="0.0.0.0")
    a, c = agent_config(inv, "a"), agent_config(inv, "c")
    assert (a.metrics.enabled, a.metrics.host, a.metrics.port) == (True, "0.0.0.0", 9500)
    assert not c.metrics.enabled


def test_home_assistant_agent_acl_bridges_and_the_ha_user():
    inv = inventory({"a": {"home_assistant": False}}, home_assistant=True, home_assistant_prefix="ha",
                    home_assistant_user="ha")
    assert agent_config(inv, "b").home_assistant.enabled and agent_config(inv, "b").home_assistant.prefix == "ha"
    assert not agent_config(inv, "a").home_assistant.enabled
    tree = choose_tree(inv)
    rules = acl_rules(render_acl(inv, tree))
    assert {"write ha/device/edgemoa_b/config", "read ha/status"} <= rules["b"]
    assert not any(rule.startswith("write ha/") for rule in rules["a"])
    # b's bridge carries the configs of its subtree (b, c) up, and Home Assistant's birth message both ways
    assert {"write ha/device/edgemoa_b/config", "write ha/device/edgemoa_c/config", "readwrite ha/status",
            "read ha/device/#"} <= rules["bridge.b"]
    assert "write ha/device/edgemoa_b/config" not in rules["bridge.c"]
    assert {"readwrite ha/#", "read moa/v1/+/status"} <= rules["ha"]
    assert not any(rule.startswith(("readwrite ha", "write ha")) for rule in rules["app"])
    conf = render_mosquitto_conf(inv, tree, inv.board("c"), installed_layout(), lambda name: "pw")
    assert "topic ha/device/# both 1\ntopic ha/status both 1\n" in conf


def test_home_assistant_user_must_be_a_user():
    with pytest.raises(ConfigError) as err:
        inventory(home_assistant=True, home_assistant_user="nobody")
    assert "home_assistant_user" in str(err.value)


def test_gateway_identity_acl_unit_and_install():
    inv = inventory({"b": {"gateway": True, "gateway_listen": "0.0.0.0:8088"}})
    tree = choose_tree(inv)
    assert broker_usernames(inv, tree, inv.board("b")) == ["b", "bridge.c", "gateway.b", "app", "ha"]
    assert "gateway.a" not in broker_usernames(inv, tree)
    rules = acl_rules(render_acl(inv, tree))
    assert rules["gateway.b"] == {"write moa/v1/b/prompt", "read moa/v1/b/answer/#", "read moa/v1/+/status"}
    unit = render_gateway_unit(inv, inv.board("b"))
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    for fragment in ("/opt/edge-moa/venv/bin/edge-moa gateway", "--device b", "--listen 0.0.0.0:8088",
                     "--broker 127.0.0.1:8883", "--topic-root moa/v1", "--username gateway.b",
                     "--password-file /run/credentials/edge-moa-gateway.service/mqtt-password",
                     "--api-key-file /run/credentials/edge-moa-gateway.service/api-key",
                     "--tls-ca-file /etc/edge-moa/tls/ca.crt", "--tls-cert-file /etc/edge-moa/tls/board.crt",
                     "--tls-key-file /run/credentials/edge-moa-gateway.service/tls-key"):
        assert fragment in exec_start, fragment
    for line in ("LoadCredential=mqtt-password:/etc/edge-moa/credentials/gateway-password",
                 "LoadCredential=api-key:/etc/edge-moa/credentials/gateway-api-key",
                 "LoadCredential=tls-key:/etc/edge-moa/credentials/tls-key", "User=edge-moa",
                 "NoNewPrivileges=true", "Restart=on-failure"):
        assert f"\n{line}\n" in unit, line
    script = render_install_sh(inv, inv.board("b"))
    assert "systemctl enable edge-moa-gateway.service" in script
    assert "install -m 0600 \"$here/credentials/gateway-api-key\"" in script
    assert "systemctl enable edge-moa-gateway.service" not in render_install_sh(inv, inv.board("a"))


def test_gateway_without_tls_has_no_tls_flags():
    inv = inventory(gateway=True, tls=False)
    unit = render_gateway_unit(inv, inv.board("a"))
    assert "--tls" not in unit and "tls-key" not in unit and "--broker 127.0.0.1:1883" in unit
