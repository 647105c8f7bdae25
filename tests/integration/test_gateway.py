"""`edge-moa gateway` against real agents (tiny ONNX model) on a real Mosquitto, with the official openai client."""

from __future__ import annotations

import http.client
import json
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from edge_agent.agent.moa import inferences_per_prompt
from edge_agent.local.mesh import LocalMesh
from edge_agent.mqtt.broker_process import MosquittoProcess
from tests.integration.gateway_helpers import FakeStreamingAgent, GatewayProcess, get_json

pytestmark = pytest.mark.slow
API_KEY = "test-key-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def mesh(tiny_model_dir):
    with MosquittoProcess() as broker:
        mesh = LocalMesh(3, engine={"model": str(tiny_model_dir), "threads": 1}, broker=broker,
                         moa={"max_new_tokens": 8}, topic_root=f"test/{uuid.uuid4().hex[:8]}")
        with mesh:
            yield mesh


@pytest.fixture(scope="module")
def gateway(mesh):
    with GatewayProcess(mesh.broker.address, "agent1", mesh.topic_root, mesh.workdir, api_key=API_KEY) as gw:
        yield gw
    print(gw.log())


@pytest.fixture
def client(gateway):
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


@pytest.mark.parametrize("model,layers,proposers", [("single", 0, 0), ("moa-M1-k2", 1, 2), ("moa", 1, 2)])
def test_openai_client_gets_the_moa_answer(client, model, layers, proposers):
    result = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Tell me a story."}],
                                            max_tokens=6)
    message = result.choices[0].message
    assert message.role == "assistant" and message.content and result.choices[0].finish_reason == "stop"
    assert result.model == model and result.id.startswith("chatcmpl-")
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens > 0
    moa = result.model_extra["moa"]  # the MoA's trace rides along in an extra field
    assert moa["device"] == "agent1" and (moa["layers"], moa["proposers"]) == (layers, proposers)
    assert moa["inferences"] == inferences_per_prompt(layers, proposers) == len(
        [e for layer in moa["trace"] for e in layer["answered"]])
    # the agent's own token counts, not an estimate: the answer is the final aggregation's new tokens
    assert result.usage.completion_tokens == moa["trace"][-1]["answered"][0]["new_tokens"] <= 6


def test_extra_body_fields_set_m_and_k(client):
    result = client.chat.completions.create(model="moa", messages=[{"role": "user", "content": "Hi"}],
                                            extra_body={"layers": 2, "proposers": 1})
    assert (result.model_extra["moa"]["layers"], result.model_extra["moa"]["proposers"]) == (2, 1)
    assert len(result.model_extra["moa"]["trace"]) == 3


def test_openai_client_streams_the_answer(client):
    stream = client.chat.completions.create(model="moa-M1-k1", messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another one?"}],
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason == "stop"]
    assert len(finals) == 1 and text
    moa = finals[0].model_extra["moa"]
    assert moa["inferences"] == 3 and len({c.id for c in chunks}) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0


def test_a_streaming_agent_reaches_the_client_in_several_deltas(client):
    chunks = list(client.chat.completions.create(model="single", max_tokens=32, stream=True,
                                                 messages=[{"role": "user", "content": "Count to twenty."}]))
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) >= 2, deltas  # the agent's chunks, not the whole answer at the end
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_curl_non_streamed_and_streamed(gateway):
    body = json.dumps({"model": "single", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4})
    base = ["curl", "-sS", "-H", f"Authorization: Bearer {API_KEY}", "-H", "Content-Type: application/json"]
    out = subprocess.run([*base, "-d", body, gateway.url + "/v1/chat/completions"], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    answer = json.loads(out)
    assert answer["object"] == "chat.completion" and answer["choices"][0]["message"]["content"]
    streamed = json.dumps({**json.loads(body), "stream": True})
    out = subprocess.run([*base, "-N", "-D", "-", "-d", streamed, gateway.url + "/v1/chat/completions"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    headers, _, events = out.partition("\n\n")  # text mode turned curl's \r\n into \n
    assert "content-type: text/event-stream" in headers.lower()
    lines = [line for line in events.split("\n") if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)


def test_api_key_is_required_and_compared(gateway):
    for key in ("wrong-key-123", API_KEY + "x", API_KEY[:-1]):  # no key at all: get_json below
        bad = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
    status, body, _ = get_json(gateway.url + "/v1/models")
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    status, body, _ = get_json(gateway.url + "/health")  # health stays open for the service manager
    assert status == 200 and body["broker_connected"] and body["device_online"] and body["agents_online"] == 3


def test_a_huge_body_is_413_and_broken_json_400(gateway):
    base = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H", f"Authorization: Bearer {API_KEY}",
            "-H", "Content-Type: application/json", gateway.url + "/v1/chat/completions"]
    big = json.dumps({"model": "single", "messages": [{"role": "user", "content": "x" * (2 << 20)}]})
    huge = subprocess.run([*base, "--data-binary", "@-"], input=big, capture_output=True, text=True, timeout=60,
                          check=True)
    assert huge.stdout == "413", huge
    broken = subprocess.run([*base, "-d", '{"model": "single", "messages": ['], capture_output=True, text=True,
                            check=True, timeout=60)
    assert broken.stdout == "400", broken


def test_models_list_the_configurations(client):
    names = [m.id for m in client.models.list()]
    assert names[:2] == ["moa", "single"] and "moa-M1-k2" in names
    assert client.models.retrieve("moa-M2-k4").id == "moa-M2-k4"  # any moa-M<m>-k<k>, listed or not
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


@pytest.mark.parametrize("kwargs,error,code", [
    ({"model": "gpt-4"}, openai.NotFoundError, "model_not_found"),
    ({"model": "moa-M9-k2"}, openai.BadRequestError, "invalid_request"),  # the agent refuses M=9
    ({"model": "single", "max_tokens": 100000}, openai.BadRequestError, "invalid_request"),
    ({"model": "single", "prompt": "x" * 70000}, openai.BadRequestError, "too_large"),
])
def test_agent_and_request_errors_are_openai_errors(client, kwargs, error, code):
    prompt = kwargs.pop("prompt", "Hi")
    with pytest.raises(error) as err:
        client.chat.completions.create(messages=[{"role": "user", "content": prompt}], **kwargs)
    assert err.value.body["code"] == code, err.value.body


def test_queue_full_is_429_with_retry_after(tmp_path):
    with MosquittoProcess() as broker, LocalMesh(
            1, engine={"kind": "synthetic", "synthetic_service_s": 1.5}, queue={"max_tasks": 1}, broker=broker,
            topic_root=f"test/{uuid.uuid4().hex[:8]}") as mesh, \
            GatewayProcess(broker.address, "agent1", mesh.topic_root, tmp_path) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=60)

        def ask(_):
            try:
                return client.chat.completions.with_raw_response.create(
                    model="single", messages=[{"role": "user", "content": "Hi"}]).http_response.status_code, None
            except openai.RateLimitError as exc:
                return 429, exc.response.headers.get("retry-after")

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(ask, range(4)))
    refused = [retry for status, retry in results if status == 429]
    assert refused and len(refused) < 4, results
    assert all(retry and int(retry) >= 1 for retry in refused)


def test_no_answer_in_time_is_504_and_an_agent_timeout_too(broker, topic_root, tmp_path):
    def script(prompt):
        if prompt["prompt"] == "silence":
            return []
        return [{"request_id": prompt["request_id"], "device": "fake", "error": {"code": "timeout",
                                                                               "message": "request timed out"}}]

    with FakeStreamingAgent(broker.host, broker.port, topic_root, "fake", script), \
            GatewayProcess(broker.address, "fake", topic_root, tmp_path, extra=["--timeout", "1"]) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=30)
        for prompt, fragment in (("silence", "no answer from fake within 1s"), ("late", "request timed out")):
            started = time.monotonic()
            with pytest.raises(openai.APIStatusError) as err:
                client.chat.completions.create(model="single", messages=[{"role": "user", "content": prompt}])
            assert err.value.status_code == 504 and fragment in err.value.message
            assert time.monotonic() - started < 10


def test_broker_unreachable_is_503(topic_root, tmp_path):
    broker = MosquittoProcess().start()
    try:
        with GatewayProcess(broker.address, "agent1", topic_root, tmp_path) as gw:
            broker.stop()
            deadline = time.monotonic() + 10
            while get_json(gw.url + "/health")[0] != 503 and time.monotonic() < deadline:
                time.sleep(0.1)
            status, body, _ = get_json(gw.url + "/health")
            assert status == 503 and not body["broker_connected"]
            client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
            with pytest.raises(openai.APIStatusError) as err:
                client.chat.completions.create(model="single", messages=[{"role": "user", "content": "Hi"}])
            assert err.value.status_code == 503 and err.value.body["code"] == "broker_unavailable"
    finally:
        broker.stop()


def test_streamed_chunks_out_of_order_and_duplicated_come_out_in_order(broker, topic_root, tmp_path):
    """The streaming contract's consumer side, against a fake agent publishing chunks then the answer."""
    words = ["The ", "sea ", "is ", "wide ", "and ", "deep."]

    def script(prompt):
        assert prompt.get("stream") is True
        chunks = [{"type": "chunk", "request_id": prompt["request_id"], "index": i, "delta": w}
                  for i, w in enumerate(words)]
        shuffled = [chunks[1], chunks[0], chunks[0], chunks[3], chunks[2], chunks[1], chunks[4], chunks[5], chunks[5]]
        answer = {"type": "answer", "request_id": prompt["request_id"], "device": "fake", "response": "".join(words),
                  "layers": 1, "proposers": 1, "latency_s": 0.1, "inferences": 3, "trace": []}
        return [*shuffled, answer]

    with FakeStreamingAgent(broker.host, broker.port, topic_root, "fake", script) as fake, \
            GatewayProcess(broker.address, "fake", topic_root, tmp_path) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=30)
        chunks = list(client.chat.completions.create(model="moa-M1-k1", stream=True,
                                                     messages=[{"role": "user", "content": "The sea?"}]))
        deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
        assert "".join(deltas) == "".join(words) and len(deltas) >= 3  # streamed in pieces, not in one
        assert fake.prompts[0]["layers"] == 1 and fake.prompts[0]["proposers"] == 1


def test_a_final_answer_without_chunks_streams_as_one_delta(broker, topic_root, tmp_path):
    def script(prompt):
        return [{"request_id": prompt["request_id"], "device": "fake", "response": "All at once.", "layers": 0,
                 "proposers": 0, "latency_s": 0.1, "inferences": 1, "trace": []}]

    with FakeStreamingAgent(broker.host, broker.port, topic_root, "fake", script), \
            GatewayProcess(broker.address, "fake", topic_root, tmp_path) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=30)
        chunks = list(client.chat.completions.create(model="single", stream=True,
                                                     messages=[{"role": "user", "content": "Hi"}]))
        deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
        assert deltas == ["All at once."]


def test_a_client_leaving_mid_stream_does_not_disturb_the_next(broker, topic_root, tmp_path):
    def script(prompt):
        rid = prompt["request_id"]
        answer = {"request_id": rid, "device": "fake", "response": "one two", "layers": 0, "proposers": 0,
                  "latency_s": 0.1, "inferences": 1, "trace": []}
        if prompt["prompt"] == "leave":
            return [{"type": "chunk", "request_id": rid, "index": 0, "delta": "one"}, 1.5,
                    {"type": "chunk", "request_id": rid, "index": 1, "delta": " two"}, answer]
        return [answer]

    with FakeStreamingAgent(broker.host, broker.port, topic_root, "fake", script), \
            GatewayProcess(broker.address, "fake", topic_root, tmp_path) as gw:
        body = json.dumps({"model": "single", "stream": True, "messages": [{"role": "user", "content": "leave"}]})
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200 and response.readline().startswith(b"data: ")  # the role chunk
        conn.close()  # gone before the answer
        time.sleep(2)
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=30)
        result = client.chat.completions.create(model="single", messages=[{"role": "user", "content": "stay"}])
        assert result.choices[0].message.content == "one two"
        assert "Traceback" not in gw.log(), gw.log()
