"""The Home Assistant discovery payload checked against HA's documented rules, templates rendered with jinja2."""

import json
import re

import jinja2
import pytest

from edge_agent import __version__
from edge_agent.agent.ha_discovery import (
    HA_STATUS_TOPIC,
    REMOVAL_PAYLOAD,
    discovery_payload,
    discovery_topic,
    ha_status_topic,
)
from edge_agent.wire.messages import Status
from edge_agent.wire.topics import Topics

STATUS_TOPIC = Topics("moa/v1").status("agent1")
PLATFORMS = {"sensor", "binary_sensor"}
# Options the device-based schema allows at the root, besides the mandatory device and origin (HA's MQTT docs).
SHARED = {"device", "origin", "components", "availability", "availability_topic", "availability_template",
          "availability_mode", "state_topic", "command_topic", "qos", "encoding"}
ONLINE = Status(device="agent1", online=True, model_id="smollm2", alpha_s=1.93, queue_length=2, queue_bytes=9,
                queue_cap_bytes=99, memory_available_bytes=2_147_483_648, version="0.1.0", answered=12,
                failed=1, latency_p50_s=4.2, sent_at=1.0).model_dump_json(exclude_none=True)
WILL = Status(device="agent1", online=False).model_dump_json(exclude_none=True)  # what the MQTT will says


@pytest.fixture
def payload():
    return discovery_payload("agent1", "smollm2-135m-instruct", __version__, STATUS_TOPIC)


def render(template: str, status_json: str) -> str:
    """As Home Assistant does: `value_json` is the parsed payload, `value` the raw text."""
    env = jinja2.Environment(undefined=jinja2.Undefined)
    return env.from_string(template).render(value_json=json.loads(status_json), value=status_json)


def test_topics():
    assert discovery_topic("agent1") == "homeassistant/device/edgemoa_agent1/config"
    assert discovery_topic("a-b_2", "ha/custom") == "ha/custom/device/edgemoa_a-b_2/config"
    assert HA_STATUS_TOPIC == ha_status_topic() == "homeassistant/status"
    assert REMOVAL_PAYLOAD == b""
    # HA: <discovery_prefix>/<component>/[<node_id>/]<object_id>/config, ids of [a-zA-Z0-9_-]
    assert re.match(r"^homeassistant/device/[a-zA-Z0-9_-]+/config$", discovery_topic("agent1"))


def test_root_has_device_and_origin_and_only_shared_options(payload):
    assert set(payload) <= SHARED
    assert payload["device"]["identifiers"] and payload["device"]["name"]  # a device needs identifiers
    assert payload["device"]["sw_version"] == __version__ and payload["device"]["model"] == "smollm2-135m-instruct"
    assert payload["origin"]["name"] == "edge-moa"  # origin.name is required
    assert payload["state_topic"] == STATUS_TOPIC
    json.dumps(payload)  # serializable as it is


def test_each_component_has_a_platform_and_a_unique_id(payload):
    components = payload["components"]
    assert {c["unique_id"].removeprefix("edgemoa_agent1_") for c in components.values()} == {
        "online", "queue_length", "alpha", "memory_available", "answered", "failed"}
    unique_ids = [c["unique_id"] for c in components.values()]
    assert len(set(unique_ids)) == len(unique_ids)
    for component_id, component in components.items():
        assert component["platform"] in PLATFORMS and component["name"]
        assert re.match(r"^[a-zA-Z0-9_-]+$", component_id)
    other = discovery_payload("agent2", "m", __version__, Topics("moa/v1").status("agent2"))
    assert not set(unique_ids) & {c["unique_id"] for c in other["components"].values()}


def test_availability_reads_the_retained_status(payload):
    for component in payload["components"].values():
        if component["platform"] == "binary_sensor":
            assert "availability" not in component  # "offline" must read as off, not unavailable
            continue
        (availability,) = component["availability"]
        assert availability["topic"] == STATUS_TOPIC
        assert render(availability["value_template"], ONLINE) == availability["payload_available"]
        assert render(availability["value_template"], WILL) == availability["payload_not_available"]


def test_value_templates_against_a_real_status_and_the_will(payload):
    c = {key.removeprefix("edgemoa_agent1_"): value for key, value in payload["components"].items()}
    online = c["online"]
    assert render(online["value_template"], ONLINE) == online["payload_on"]
    assert render(online["value_template"], WILL) == online["payload_off"]
    assert render(c["queue_length"]["value_template"], ONLINE) == "2"
    assert float(render(c["alpha"]["value_template"], ONLINE)) == pytest.approx(1.93)
    assert float(render(c["memory_available"]["value_template"], ONLINE)) == pytest.approx(2048)
    assert render(c["answered"]["value_template"], ONLINE) == "12"
    assert render(c["failed"]["value_template"], ONLINE) == "1"
    for name in ("queue_length", "alpha", "memory_available", "answered", "failed"):
        assert render(c[name]["value_template"], WILL) == "None"  # HA: "None" = unknown, not a template error


def test_units_and_classes_are_ones_home_assistant_knows(payload):
    c = {key.removeprefix("edgemoa_agent1_"): value for key, value in payload["components"].items()}
    assert (c["alpha"]["device_class"], c["alpha"]["unit_of_measurement"]) == ("duration", "s")
    assert (c["memory_available"]["device_class"], c["memory_available"]["unit_of_measurement"]) == ("data_size",
                                                                                                     "MiB")
    assert c["answered"]["state_class"] == c["failed"]["state_class"] == "total_increasing"
    assert c["online"]["device_class"] == "connectivity"


def test_unique_prefix_separates_meshes():
    a = discovery_payload("agent1", "m", "1", STATUS_TOPIC, unique_prefix="edgemoa_lab_agent1")
    assert all(c["unique_id"].startswith("edgemoa_lab_agent1_") for c in a["components"].values())
    assert a["device"]["identifiers"] == ["edgemoa_lab_agent1"]


def test_a_device_id_unusable_in_topics_is_refused():
    with pytest.raises(ValueError):
        discovery_topic("agent/1")


def test_announcer_decides_when_to_publish():
    from edge_agent.agent.ha_discovery import DiscoveryAnnouncer

    announcer = DiscoveryAnnouncer("agent1", "m", "1", STATUS_TOPIC, prefix="ha")
    assert announcer.subscriptions() == ["ha/status"]
    (config,) = announcer.on_connected()
    assert config.topic == "ha/device/edgemoa_agent1/config" and config.retain
    assert json.loads(config.payload)["state_topic"] == STATUS_TOPIC
    assert announcer.on_message("ha/status", b"online") == [config]
    assert announcer.on_message("ha/status", b"offline") == []
    assert announcer.on_message("other/status", b"online") == []
    (removal,) = announcer.decommission()
    assert removal.topic == config.topic and removal.payload == b"" and removal.retain
