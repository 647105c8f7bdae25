"""One HOST:PORT parser for the broker address, the gateway's --listen and the delay proxy (edge_agent/host_port.py)."""

import argparse

import pytest

from edge_agent.errors import ConfigError
from edge_agent.gateway.commands import parse_listen
from edge_agent.host_port import parse_host_port
from edge_agent.mqtt.broker_args import add_broker_args, broker_from_args


@pytest.mark.parametrize("text,expected", [
    ("127.0.0.1:1883", ("127.0.0.1", 1883)),
    ("broker.lan:8883", ("broker.lan", 8883)),
    ("[::1]:9000", ("::1", 9000)),
    ("host:65535", ("host", 65535)),
])
def test_host_and_port(text, expected):
    assert parse_host_port(text) == expected


@pytest.mark.parametrize("text", ["host", "host:", ":80", "host:0", "host:65536", "host:x1", "host:-1", "host:١٢",
                                  "[::1", "[::1]9000", ""])
def test_refused_without_defaults(text):
    with pytest.raises(ValueError, match="is not"):
        parse_host_port(text)


def test_the_defaults_a_broker_and_a_listener_use():
    assert parse_host_port("pi-a", default_port=1883) == ("pi-a", 1883)
    assert parse_host_port("[::1]", default_port=1883) == ("::1", 1883)
    assert parse_host_port(":8080", default_host="0.0.0.0") == ("0.0.0.0", 8080)
    assert parse_host_port("127.0.0.1:0", port_zero=True) == ("127.0.0.1", 0)
    with pytest.raises(ValueError):
        parse_host_port(":1883", default_port=1883)  # a broker needs a host


def test_the_gateway_reports_a_bad_listen_address_by_its_flag():
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen(":8080") == ("0.0.0.0", 8080)
    with pytest.raises(ConfigError) as info:
        parse_listen("127.0.0.1")
    assert info.value.problems[0][:2] == ("--listen", "127.0.0.1")


def test_the_broker_flag_takes_host_alone_and_reports_a_bad_one_by_its_flag():
    parser = argparse.ArgumentParser()
    add_broker_args(parser)
    settings = broker_from_args(parser.parse_args(["--broker", "pi-a"]))
    assert (settings.host, settings.port) == ("pi-a", 1883)
    with pytest.raises(ConfigError) as info:
        broker_from_args(parser.parse_args(["--broker", "pi-a:99999"]))
    assert info.value.problems[0][:2] == ("--broker", "pi-a:99999")
