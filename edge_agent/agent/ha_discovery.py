"""Home Assistant MQTT device discovery for one agent: topics and payloads only (the agent publishes them)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

# Home Assistant's topics are its own namespace, outside our topic root, so they are built here, not in topics.py.
DEFAULT_PREFIX = "homeassistant"
HA_STATUS_TOPIC = f"{DEFAULT_PREFIX}/status"  # HA's birth ("online") and will ("offline"), not retained by default
HA_ONLINE = b"online"
SUPPORT_URL = "https://github.com/edge-moa/edge-moa/blob/main/docs/ecosystem.md"
_OBJECT_ID = re.compile(r"^[A-Za-z0-9_-]+$")  # HA: the <object_id> level is [a-zA-Z0-9_-]
REMOVAL_PAYLOAD = b""  # retained and empty: HA deletes the device and its entities, the broker forgets the config


def object_id(device: str) -> str:
    """`edgemoa_<device>`: prefixed so an agent called `kitchen` does not take another integration's id."""
    oid = f"edgemoa_{device}"
    if not _OBJECT_ID.match(oid):
        raise ValueError(f"device id {device!r} is not usable in a Home Assistant topic")
    return oid


def discovery_topic(device: str, prefix: str = DEFAULT_PREFIX) -> str:
    """`<prefix>/device/edgemoa_<device>/config`: device-based discovery (one payload, every component)."""
    return f"{prefix}/device/{object_id(device)}/config"


def ha_status_topic(prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}/status"


def _number(key: str, scale: str = "") -> str:
    # A will payload ({"online": false}) has no such key: "None" sets the sensor to unknown instead of an error.
    return f"{{{{ (value_json.{key}{scale}) if value_json.{key} is defined and value_json.{key} is not none " \
           f"else None }}}}"


def discovery_payload(device: str, model_id: str | None, version: str, status_topic: str, *,
                      unique_prefix: str | None = None, configuration_url: str | None = None) -> dict[str, Any]:
    """The retained JSON for `discovery_topic(device)`: device, origin, and six components read from the agent's
    retained status topic (docs/protocol.md "Status"). `unique_prefix` tells meshes apart in one Home Assistant
    (default `edgemoa_<device>`)."""
    uid = unique_prefix or object_id(device)
    availability = [{"topic": status_topic, "value_template": "{{ 'online' if value_json.online else 'offline' }}",
                     "payload_available": "online", "payload_not_available": "offline"}]

    def sensor(key: str, name: str, template: str, **extra: Any) -> dict[str, Any]:
        return {"platform": "sensor", "name": name, "unique_id": f"{uid}_{key}", "value_template": template,
                "availability": availability, **extra}

    device_info: dict[str, Any] = {"identifiers": [uid], "name": f"edge-moa {device}", "manufacturer": "edge-moa",
                                   "model": model_id or "unknown model", "sw_version": version}
    if configuration_url:
        device_info["configuration_url"] = configuration_url
    return {
        "device": device_info,
        "origin": {"name": "edge-moa", "sw_version": version, "support_url": SUPPORT_URL},
        "state_topic": status_topic,  # shared by every component
        "qos": 1,
        "components": {
            f"{uid}_online": {
                # No availability: an agent that is off should read "off", not "unavailable".
                "platform": "binary_sensor", "name": "Online", "unique_id": f"{uid}_online",
                "device_class": "connectivity", "value_template": "{{ 'ON' if value_json.online else 'OFF' }}",
                "payload_on": "ON", "payload_off": "OFF", "entity_category": "diagnostic"},
            f"{uid}_queue_length": sensor("queue_length", "Queue length", _number("queue_length"),
                                          state_class="measurement", unit_of_measurement="tasks",
                                          icon="mdi:tray-full"),
            f"{uid}_alpha": sensor("alpha", "Mean inference time", _number("alpha_s"), device_class="duration",
                                   unit_of_measurement="s", state_class="measurement",
                                   suggested_display_precision=2),
            f"{uid}_memory_available": sensor("memory_available", "Memory available",
                                              _number("memory_available_bytes", " / 1048576"),
                                              device_class="data_size", unit_of_measurement="MiB",
                                              state_class="measurement", suggested_display_precision=0,
                                              entity_category="diagnostic"),
            f"{uid}_answered": sensor("answered", "Prompts answered", _number("answered"),
                                      state_class="total_increasing", icon="mdi:message-check"),
            f"{uid}_failed": sensor("failed", "Prompts failed", _number("failed"), state_class="total_increasing",
                                    icon="mdi:message-alert"),
        },
    }


@dataclass(frozen=True)
class Publish:
    """One message the agent must publish (QoS 1)."""

    topic: str
    payload: bytes
    retain: bool = True


class DiscoveryAnnouncer:
    """When to publish the discovery config, as decisions without I/O; the agent carries them out.

    - `subscriptions()` once, before or at connect: Home Assistant's status topic;
    - `on_connected()` after every (re)connect: the config, retained;
    - `on_message(topic, payload)` for each message on those subscriptions: the config again when Home Assistant
      announces itself (`online`, its birth message after a restart), nothing otherwise;
    - `decommission()` when the board leaves the mesh: the empty retained payload that deletes the device.
    """

    def __init__(self, device: str, model_id: str | None, version: str, status_topic: str, *,
                 prefix: str = DEFAULT_PREFIX, unique_prefix: str | None = None):
        self.topic = discovery_topic(device, prefix)
        self.status_topic = ha_status_topic(prefix)
        payload = discovery_payload(device, model_id, version, status_topic, unique_prefix=unique_prefix)
        self._config = json.dumps(payload, separators=(",", ":")).encode("utf-8")

    def subscriptions(self) -> list[str]:
        return [self.status_topic]

    def on_connected(self) -> list[Publish]:
        return [Publish(self.topic, self._config)]

    def on_message(self, topic: str, payload: bytes) -> list[Publish]:
        if topic == self.status_topic and payload.strip() == HA_ONLINE:
            return [Publish(self.topic, self._config)]
        return []

    def decommission(self) -> list[Publish]:
        return [Publish(self.topic, REMOVAL_PAYLOAD)]
