"""From a prompt message to a request: defaults, limits and the reply route, without a broker."""

import pytest

from edge_agent.agent.intake import read_prompt
from edge_agent.config import LimitsSection, MoaSection
from edge_agent.errors import ProtocolError, Refusal
from edge_agent.mqtt.transport import RawMessage
from edge_agent.wire.topics import Topics

MOA = MoaSection(layers=1, proposers=2, max_layers=2, max_proposers=3, max_new_tokens=32, max_new_tokens_limit=64)


def read(payload: bytes, **props):
    message = RawMessage(topic="moa/v1/a/prompt", payload=payload, **props)
    return read_prompt(message, device="a", topics=Topics(), moa=MOA, limits=LimitsSection(max_prompt_chars=20),
                       received_at=5.0)


def test_plain_text_gets_the_defaults_and_the_answer_topic():
    request = read(b"Hello")
    assert (request.layers, request.proposers, request.max_new_tokens, request.temperature) == (1, 2, 32, 0.7)
    assert request.reply_topic == f"moa/v1/a/answer/{request.request_id}" and request.received_at == 5.0


def test_response_topic_wins_over_reply_to_and_correlation_is_kept():
    request = read(b'{"prompt": "hi", "reply_to": "apps/x"}', response_topic="apps/rt", correlation_data=b"\x01\x02")
    assert (request.reply_topic, request.correlation_data) == ("apps/rt", "0102")
    assert read(b'{"prompt": "hi", "reply_to": "apps/x"}').reply_topic == "apps/x"


def test_options_within_limits_are_taken():
    request = read(b'{"prompt": "hi", "layers": 0, "proposers": 3, "max_new_tokens": 64, "temperature": 0}')
    assert (request.layers, request.proposers, request.max_new_tokens, request.temperature) == (0, 3, 64, 0.0)


@pytest.mark.parametrize("payload,fragment", [
    (b'{"prompt": "hi", "layers": 3}', "layers 3 exceeds this agent's limit of 2"),
    (b'{"prompt": "hi", "proposers": 4}', "proposers 4"),
    (b'{"prompt": "hi", "max_new_tokens": 65}', "max_new_tokens 65"),
    (b"x" * 21, "prompt length 21"),
])
def test_over_a_limit_is_refused_on_the_known_route(payload, fragment):
    with pytest.raises(Refusal) as info:
        read(payload, response_topic="apps/rt")
    assert info.value.code == "invalid_request" and fragment in info.value.message
    assert info.value.route.topic == "apps/rt"


def test_unreadable_payload_and_wildcard_reply_topics_are_protocol_errors():
    with pytest.raises(ProtocolError):
        read(b"{oops")
    with pytest.raises(ProtocolError):
        read(b'{"prompt": "hi", "reply_to": "apps/#"}')
