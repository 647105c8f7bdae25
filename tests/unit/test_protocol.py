"""Validation at the edge: what user apps and peers may send, and where errors go."""

import json

import pytest

from edge_agent.errors import ProtocolError
from edge_agent.wire.messages import (
    ResultMessage,
    TaskMessage,
    WireChatMessage,
    best_effort_route,
    decode_internal,
    decode_status,
    encode,
    parse_prompt_json,
)
from edge_agent.wire.topics import Topics

topics = Topics("moa/v1")


def answer_topic(rid):
    return topics.answer("a", rid)


def test_plain_text_prompt():
    assert parse_prompt_json(b"Hello there").prompt == "Hello there"


def test_json_prompt_with_options():
    payload = parse_prompt_json(json.dumps({"prompt": "hi", "layers": 2, "proposers": 1, "request_id": "r-1"}).encode())
    assert (payload.prompt, payload.layers, payload.proposers, payload.request_id) == ("hi", 2, 1, "r-1")


@pytest.mark.parametrize("payload,fragment", [
    (b"", "empty"),
    (b"   ", "empty"),
    (b"\xff\xfe", "UTF-8"),
    (b"{not json", "not valid JSON"),
    (json.dumps({"prompt": ""}).encode(), "prompt"),
    (json.dumps({"prompt": "x", "layers": -1}).encode(), "layers"),
    (json.dumps({"prompt": "x", "colour": "red"}).encode(), "colour"),
    (json.dumps({"prompt": "x", "request_id": "a/b"}).encode(), "request_id"),
])
def test_malformed_prompts_say_what_is_wrong(payload, fragment):
    with pytest.raises(ProtocolError) as info:
        parse_prompt_json(payload)
    assert info.value.code == "invalid_request"
    assert fragment in str(info.value)


def test_error_route_prefers_response_topic_then_reply_to_then_answer_topic():
    body = json.dumps({"prompt": 3, "request_id": "r9", "reply_to": "apps/x"}).encode()
    assert best_effort_route(body, "rt/1", b"\x01", answer_topic).topic == "rt/1"
    route = best_effort_route(body, None, None, answer_topic)
    assert (route.topic, route.request_id) == ("apps/x", "r9")
    assert best_effort_route(b"{broken", None, None, answer_topic).topic.startswith("moa/v1/a/answer/")
    assert best_effort_route(body, "bad/#", None, answer_topic).topic == "apps/x"


def test_internal_messages_round_trip_and_reject_bad_fields():
    task = TaskMessage(sender="a", request_id="r", layer=1, task_id="t" * 16,
                       messages=[WireChatMessage(role="user", content="q")], max_new_tokens=8, temperature=0.7)
    assert decode_internal(encode(task)) == task
    data = json.loads(encode(task))
    data["sender"] = "not a valid id!"
    with pytest.raises(ProtocolError):
        decode_internal(json.dumps(data).encode())
    data = json.loads(encode(task))
    data["v"] = 99
    with pytest.raises(ProtocolError) as info:
        decode_internal(json.dumps(data).encode())
    assert info.value.code == "unsupported_version"
    with pytest.raises(ProtocolError):
        decode_internal(b'{"type": "nonsense"}')


def test_each_message_has_its_own_id():
    a = ResultMessage(sender="a", request_id="r", layer=1, task_id="t" * 16, text="x")
    b = ResultMessage(sender="a", request_id="r", layer=1, task_id="t" * 16, text="x")
    assert a.msg_id != b.msg_id


def test_status_decoding():
    assert decode_status(b'{"device": "a", "online": false}').online is False
    with pytest.raises(ProtocolError):
        decode_status(b'{"online": true}')


def test_topics_parse():
    assert topics.parse("moa/v1/agent1/prompt") == ("agent1", "prompt", None)
    assert topics.parse("moa/v1/agent1/inbox/agent2") == ("agent1", "inbox", "agent2")
    assert topics.parse("moa/v1/agent1/answer/r1") == ("agent1", "answer", "r1")
    assert topics.parse("other/agent1/prompt") is None
    assert topics.parse("moa/v1/bad id/prompt") is None
    assert topics.parse("moa/v1/agent1/inbox/a/b") is None


def test_deep_nesting_is_refused_before_the_parser_sees_it():
    from edge_agent.wire.messages import MAX_JSON_DEPTH, json_depth, load_json

    assert json_depth('{"a": [1, {"b": "[[[\\"["}]}') == 3  # brackets inside strings do not count
    with pytest.raises(ProtocolError, match="nests deeper"):
        load_json(b'{"prompt": ' + b"[" * 100000 + b"]" * 100000 + b"}", "prompt")
    assert load_json("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH, "x") is not None
    assert load_json('{"s": "' + "[" * 1000 + '"}', "x") == {"s": "[" * 1000}


def test_a_results_cached_tokens_round_trip_and_never_exceed_its_prompt_tokens():
    result = ResultMessage(sender="a", request_id="r", layer=2, task_id="t" * 16, text="x", prompt_tokens=300,
                           cached_tokens=128)
    assert decode_internal(encode(result)) == result
    data = json.loads(encode(result))
    for cached, prompt in ((301, 300), (5, None), (-1, 300)):
        data["cached_tokens"], data["prompt_tokens"] = cached, prompt
        with pytest.raises(ProtocolError, match="cached_tokens"):
            decode_internal(json.dumps(data).encode())
