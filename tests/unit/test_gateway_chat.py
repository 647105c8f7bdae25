"""The gateway's pure parts: OpenAI requests into prompts, agent answers and errors into OpenAI JSON, chunk order."""

import pytest

from edge_agent.gateway import chat
from edge_agent.gateway.stream import ChunkAssembler


def plan(**body):
    return chat.parse_chat_request({"messages": [{"role": "user", "content": "Hi"}], **body})


@pytest.mark.parametrize("model,layers,proposers", [
    ("moa", None, None), ("single", 0, 0), ("moa-M1-k2", 1, 2), ("moa-M2-k3", 2, 3), ("moa-M0-k0", 0, 0),
])
def test_model_names_give_m_and_k(model, layers, proposers):
    p = plan(model=model)
    assert (p.layers, p.proposers) == (layers, proposers)
    assert p.options()["layers"] == layers


def test_extra_body_fields_override_the_model_name():
    p = plan(model="moa-M1-k2", layers=2, proposers=0, max_tokens=33, temperature=0.0)
    assert p.options() == {"layers": 2, "proposers": 0, "max_new_tokens": 33, "temperature": 0.0}
    assert plan(max_completion_tokens=7, max_tokens=99).max_new_tokens == 7


@pytest.mark.parametrize("model", ["gpt-4o", "moa-M1", "moa-Mx-k2", "moa-M1-k2-extra"])
def test_unknown_model_is_404_model_not_found(model):
    with pytest.raises(chat.RequestError) as err:
        plan(model=model)
    assert err.value.status == 404 and err.value.body()["error"]["code"] == "model_not_found"
    assert err.value.body()["error"]["param"] == "model"


@pytest.mark.parametrize("body,param", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "system", "content": "be brief"}]}, "messages"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": 3}, "temperature"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages.0.content"),
])
def test_bad_requests_are_400_with_the_parameter(body, param):
    with pytest.raises(chat.RequestError) as err:
        chat.parse_chat_request(body)
    assert err.value.status == 400 and err.value.param == param, err.value


def test_one_user_message_goes_as_it_is_and_system_first():
    assert plan().prompt == "Hi"
    p = chat.parse_chat_request({"messages": [{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": [{"type": "text", "text": "Hi"},
                                                                           {"type": "text", "text": "there"}]}]})
    assert p.prompt == "Be brief.\n\nHi\nthere"


def test_a_conversation_becomes_a_transcript_ending_with_the_last_message():
    p = chat.parse_chat_request({"messages": [
        {"role": "developer", "content": "Answer in French."},
        {"role": "user", "content": "Capital of Italy?"},
        {"role": "assistant", "content": "Rome."},
        {"role": "user", "content": "And of Spain?"}]})
    assert p.prompt == "Answer in French.\n\nUser: Capital of Italy?\n\nAssistant: Rome.\n\nUser: And of Spain?"


ANSWER = {"request_id": "r1", "device": "agent1", "response": "Paris is the capital.", "layers": 1, "proposers": 2,
          "latency_s": 1.5, "inferences": 4, "trace": [{"layer": 1}]}


def test_completion_has_openai_fields_usage_and_the_moa_trace():
    body = chat.completion("chatcmpl-1", "moa", "What is the capital of France?", ANSWER, created=5)
    assert body["object"] == "chat.completion" and body["created"] == 5
    assert body["choices"][0]["message"] == {"role": "assistant", "content": ANSWER["response"]}
    assert body["choices"][0]["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["completion_tokens"] == chat.approx_tokens(ANSWER["response"]) > 0
    assert body["moa"]["trace"] == ANSWER["trace"] and body["moa"]["inferences"] == 4


def test_usage_from_the_agent_wins_over_the_estimate():
    usage = chat.usage("x", {**ANSWER, "usage": {"prompt_tokens": 40, "completion_tokens": 12}})
    assert usage == {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52}


@pytest.mark.parametrize("code,status,retry", [
    ("queue_full", 429, True), ("too_large", 400, False), ("invalid_request", 400, False), ("timeout", 504, False),
    ("no_peers", 503, False), ("inference_failed", 502, False),
])
def test_agent_errors_map_to_http_statuses(code, status, retry):
    err = chat.agent_error({"device": "agent1", "error": {"code": code, "message": "why"}}, retry_after_s=7)
    assert err.status == status and err.code == code
    assert err.retry_after_s == (7 if retry else None)
    assert err.body()["error"]["message"] == "agent1: why"


def test_retry_after_follows_the_queue():
    assert chat.retry_after(None, None) == 5
    assert chat.retry_after(4, 2.5) == 10
    assert chat.retry_after(1000, 9.0) == 120


def test_chunks_in_order_out_of_order_and_duplicated():
    a = ChunkAssembler()
    assert a.add(1, "b") == []  # waits for 0
    assert a.add(0, "a") == ["a", "b"]
    assert a.add(1, "b") == [] and a.add(0, "a") == []  # duplicates after a reconnect
    assert a.add(3, "d") == [] and a.add(3, "d") == []
    assert a.add(2, "c") == ["c", "d"]
    assert a.text == "abcd" and a.next_index == 4
    assert a.finish("abcde") == "e"


def test_no_chunks_at_all_streams_the_whole_answer_and_a_mismatch_sends_nothing_more():
    assert ChunkAssembler().finish("whole answer") == "whole answer"
    a = ChunkAssembler()
    a.add(0, "Hello")
    assert a.finish("Goodbye") == ""
