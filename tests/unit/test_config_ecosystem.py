"""The [metrics] and [home_assistant] sections of agent.toml: defaults, limits, errors with their key path."""

import pytest

from edge_agent.config import HomeAssistantSection, MetricsSection, parse_config
from edge_agent.errors import ConfigError

BASE = {"agent": {"device_id": "agent1"}}


def test_defaults_are_off_and_local():
    config = parse_config(BASE)
    assert (config.metrics.enabled, config.metrics.host, config.metrics.port) == (False, "127.0.0.1", 9464)
    assert (config.home_assistant.enabled, config.home_assistant.prefix) == (False, "homeassistant")


def test_every_field_is_described():
    for section in (MetricsSection, HomeAssistantSection):
        for name, field in section.model_fields.items():
            assert field.description, f"{section.__name__}.{name}"


@pytest.mark.parametrize("section,values,path", [
    ("metrics", {"port": 70000}, "metrics.port"),
    ("metrics", {"host": ""}, "metrics.host"),
    ("metrics", {"enable": True}, "metrics.enable"),
    ("home_assistant", {"prefix": "ha/#"}, "home_assistant.prefix"),
    ("home_assistant", {"prefix": "/ha"}, "home_assistant.prefix"),
])
def test_errors_name_the_key(section, values, path):
    with pytest.raises(ConfigError) as err:
        parse_config({**BASE, section: values})
    assert [p for p, _, _ in err.value.problems] == [path]


def test_enabled_sections_parse():
    config = parse_config({**BASE, "metrics": {"enabled": True, "port": 0, "host": "0.0.0.0"},
                           "home_assistant": {"enabled": True, "prefix": "ha/lab"}})
    assert config.metrics.port == 0 and config.home_assistant.prefix == "ha/lab"
