"""Wire messages as validated, frozen, versioned values (docs/protocol.md); untrusted bytes are checked here."""

from __future__ import annotations

import json
import re
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from . import PROTOCOL_VERSION
from .config import DEVICE_ID_PATTERN
from .errors import ProtocolError

REQUEST_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)
DeviceId = Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]
RequestId = Annotated[str, Field(pattern=REQUEST_ID_PATTERN)]


def new_id() -> str:
    return uuid.uuid4().hex


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# ---------------------------------------------------------------- public: prompts from user apps


class PromptPayload(Frozen):
    """The JSON form of a prompt on `<root>/<device>/prompt`."""

    prompt: str = Field(min_length=1)
    request_id: RequestId | None = None
    reply_to: str | None = Field(None, min_length=1, max_length=512)
    max_new_tokens: int | None = Field(None, ge=1)
    layers: int | None = Field(None, ge=0)
    proposers: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0, le=2)


class UserRequest(Frozen):
    """An accepted prompt with every default filled in and its reply route fixed; what the journal keeps."""

    request_id: str
    device: str
    prompt: str
    reply_topic: str
    correlation_data: str | None = None  # hex of the MQTT v5 Correlation Data, echoed back
    layers: int
    proposers: int
    max_new_tokens: int
    temperature: float
    received_at: float  # wall clock, for latency across restarts


class ReplyRoute(Frozen):
    topic: str
    correlation_data: str | None = None
    request_id: str


def check_publish_topic(topic: str) -> None:
    if not topic or "+" in topic or "#" in topic or "\x00" in topic or len(topic.encode()) > 512:
        raise ProtocolError(f"reply topic {topic[:80]!r} is not a valid topic to publish to")


def parse_prompt_json(payload: bytes) -> PromptPayload:
    """Decode a prompt payload: a JSON object, or else plain UTF-8 text."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("prompt payload is not UTF-8 text") from None
    stripped = text.strip()
    if not stripped:
        raise ProtocolError("prompt is empty")
    if not stripped.startswith("{"):
        return PromptPayload(prompt=text)
    try:
        data = json.loads(stripped)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"prompt payload starts with '{{' but is not valid JSON: {exc.msg}") from None
    try:
        return PromptPayload.model_validate(data)
    except ValidationError as exc:
        raise ProtocolError(describe_validation(exc)) from None


def best_effort_route(payload: bytes, response_topic: str | None, correlation: bytes | None,
                      answer_topic_for) -> ReplyRoute | None:
    """Where to send an error for a payload we could not accept, if anywhere (DESIGN section 2 order)."""
    request_id = None
    reply_to = None
    try:
        data = json.loads(payload.decode("utf-8"))
        if isinstance(data, dict):
            rid = data.get("request_id")
            request_id = rid if isinstance(rid, str) and _REQUEST_ID.match(rid) else None
            reply_to = data.get("reply_to") if isinstance(data.get("reply_to"), str) else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        pass
    request_id = request_id or new_id()[:16]
    corr = correlation.hex() if correlation else None
    for topic in (response_topic, reply_to):
        if topic:
            try:
                check_publish_topic(topic)
                return ReplyRoute(topic=topic, correlation_data=corr, request_id=request_id)
            except ProtocolError:
                continue
    if response_topic is None and reply_to is None and request_id:
        return ReplyRoute(topic=answer_topic_for(request_id), correlation_data=corr, request_id=request_id)
    return None


def describe_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "payload"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


# ---------------------------------------------------------------- public: answers and status


class TraceEntry(Frozen):
    device: str
    outcome: Literal["ok", "busy", "ack_timeout", "result_timeout", "error", "unreachable"]
    inference_s: float | None = None
    detail: str | None = None


class LayerTrace(Frozen):
    layer: int
    kind: Literal["propose", "aggregate"]
    answered: list[TraceEntry]
    dropped: list[TraceEntry] = []
    requested: int  # how many proposers this layer asked for ({self} + k)


class Answer(Frozen):
    request_id: str
    device: str
    response: str
    layers: int
    proposers: int
    latency_s: float
    inferences: int
    trace: list[LayerTrace]


class ErrorBody(Frozen):
    code: str
    message: str


class ErrorAnswer(Frozen):
    request_id: str
    device: str
    error: ErrorBody


class Status(Frozen):
    v: int = PROTOCOL_VERSION
    type: Literal["status"] = "status"
    device: str
    online: bool
    model_id: str | None = None
    alpha_s: float | None = None
    queue_length: int | None = None
    queue_bytes: int | None = None
    queue_cap_bytes: int | None = None
    memory_available_bytes: int | None = None
    busy: bool | None = None
    version: str | None = None
    uptime_s: float | None = None
    heartbeat_s: float | None = None
    answered: int | None = None  # own users' prompts answered since start
    failed: int | None = None  # own users' prompts that got an error
    served: int | None = None  # inferences run (own and peers')
    latency_p50_s: float | None = None  # over the last 100 answers to own users
    sent_at: float | None = None  # sender's wall clock


# ---------------------------------------------------------------- internal: agent to agent


class WireChatMessage(Frozen):
    role: Literal["system", "user", "assistant"]
    content: str


class InternalMessage(Frozen):
    v: Literal[1] = PROTOCOL_VERSION
    msg_id: str = Field(default_factory=new_id, min_length=8, max_length=64)
    sender: DeviceId
    request_id: str = Field(min_length=1, max_length=64)
    layer: int = Field(ge=1)
    task_id: str = Field(min_length=8, max_length=64)  # the correlation id of task -> ack -> result


class TaskMessage(InternalMessage):
    type: Literal["task"] = "task"
    messages: list[WireChatMessage] = Field(min_length=1)
    max_new_tokens: int = Field(ge=1)
    temperature: float = Field(ge=0, le=2)


class TaskAckMessage(InternalMessage):
    type: Literal["task_ack"] = "task_ack"
    accepted: bool
    reason: str | None = None  # busy | too_large | invalid_request, when refused
    queue_length: int = 0
    eta_s: float = 0.0  # the proposer's estimate of when the result will be ready


class ResultMessage(InternalMessage):
    type: Literal["result"] = "result"
    text: str | None = None
    error: ErrorBody | None = None
    inference_s: float = 0.0
    new_tokens: int = 0


Internal = Annotated[TaskMessage | TaskAckMessage | ResultMessage, Field(discriminator="type")]
_INTERNAL = TypeAdapter(Internal)


def decode_internal(payload: bytes) -> TaskMessage | TaskAckMessage | ResultMessage:
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"internal message is not JSON: {exc}") from None
    if isinstance(data, dict) and data.get("v") not in (None, PROTOCOL_VERSION):
        raise ProtocolError(f"protocol version {data.get('v')!r} not supported", code="unsupported_version")
    try:
        return _INTERNAL.validate_python(data)
    except ValidationError as exc:
        raise ProtocolError(describe_validation(exc)) from None


def decode_status(payload: bytes) -> Status:
    try:
        return Status.model_validate_json(payload)
    except ValidationError as exc:
        raise ProtocolError(describe_validation(exc)) from None


def encode(message: BaseModel) -> bytes:
    return message.model_dump_json(exclude_none=True).encode("utf-8")


def encode_dict(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode("utf-8")
