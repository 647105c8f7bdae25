"""Config errors name the key path, the value and what is wrong."""

import pytest

from edge_agent.config import parse_config
from edge_agent.errors import ConfigError


def test_minimal_config_fills_defaults():
    config = parse_config({"agent": {"device_id": "board-1"}})
    assert config.moa.layers == 1 and config.mqtt.topic_root == "moa/v1" and config.engine.kind == "onnx"


@pytest.mark.parametrize("data,path,fragment", [
    ({"agent": {"device_id": "bad id"}}, "agent.device_id", "must match"),
    ({"agent": {"device_id": "a"}, "mqtt": {"port": 70000}}, "mqtt.port", "less than or equal"),
    ({"agent": {"device_id": "a"}, "moa": {"layers": 5}}, "moa", "max_layers"),
    ({"agent": {"device_id": "a"}, "engine": {"kind": "gpu"}}, "engine.kind", "'onnx' or 'synthetic'"),
    ({"agent": {"device_id": "a"}, "queue": {"colour": 1}}, "queue.colour", "unknown key"),
    ({}, "agent", "Field required"),
])
def test_errors_report_key_path(data, path, fragment):
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    paths = [p for p, _, _ in info.value.problems]
    messages = " ".join(m for _, _, m in info.value.problems)
    assert path in paths and fragment in messages
