"""Wire messages as validated, frozen, versioned values (docs/protocol.md); untrusted bytes are checked here."""

from __future__ import annotations

import json
import re
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from .. import PROTOCOL_VERSION
from ..config import DEVICE_ID_PATTERN, Aggregation, SelectRanker
from ..errors import ProtocolError

REQUEST_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)
DeviceId = Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]
RequestId = Annotated[str, Field(pattern=REQUEST_ID_PATTERN)]


def new_id() -> str:
    return uuid.uuid4().hex


class Frozen(BaseModel):
    # NaN and Infinity (which Python's json accepts) never pass: a deadline computed from them never ends.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


# Bounds for numbers from the wire: generous for any real board, finite for every computation made with them.
Seconds = Annotated[float, Field(ge=0, le=86400)]
Count = Annotated[int, Field(ge=0, le=10**7)]
Bytes = Annotated[int, Field(ge=0, le=2**50)]


# ---------------------------------------------------------------- public: prompts from user apps


class PromptPayload(Frozen):
    """The JSON form of a prompt on `<root>/<device>/prompt`."""

    prompt: str = Field(min_length=1)
    request_id: RequestId | None = None
    reply_to: str | None = Field(None, min_length=1, max_length=512)
    max_new_tokens: int | None = Field(None, ge=1, le=10**6)
    layers: int | None = Field(None, ge=0, le=1000)
    proposers: int | None = Field(None, ge=0, le=1000)
    temperature: float | None = Field(None, ge=0, le=2)
    stream: bool = False  # chunks of the final aggregation before the answer (docs/protocol.md, Streaming)
    aggregation: Aggregation | None = None  # synthesize | select (docs/protocol.md, Prompt)
    select_ranker: SelectRanker | None = None  # pointwise | pairwise, for select
    reference_max_chars: int | None = Field(None, ge=0, le=10**6)  # cap of each quoted answer (0 = none)


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
    deadline_at: float | None = None  # wall clock; None in rows of older versions (then received_at + timeout)
    stream: bool = False
    prompt_tokens: int | None = None  # counted at admission
    # older rows lack these: their defaults are what those versions did (synthesis of uncut references)
    aggregation: Aggregation = "synthesize"
    select_ranker: SelectRanker = "pointwise"
    reference_max_chars: int = 0


class ReplyRoute(Frozen):
    topic: str
    correlation_data: str | None = None
    request_id: str


def check_publish_topic(topic: str) -> None:
    if not topic or "+" in topic or "#" in topic or "\x00" in topic or len(topic.encode()) > 512:
        raise ProtocolError(f"reply topic {topic[:80]!r} is not a valid topic to publish to")


MAX_JSON_DEPTH = 64


def load_json(payload: bytes | str, what: str):
    """json.loads behind a nesting limit: deeper input is refused before parsing, so a hostile payload never
    drives the parser into a RecursionError (which also upsets CPython 3.11's own recursion accounting: the
    `ast` module failed afterwards in the same process). Every failure is a ProtocolError."""
    text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and json_depth(text, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise ProtocolError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError(f"{what} is not valid JSON: {getattr(exc, 'msg', exc)}") from None


def json_depth(text: str, stop_above: int | None = None) -> int:
    """The deepest nesting of brackets outside strings (a JSON text's structure, without parsing it); the scan
    ends as soon as it passes `stop_above`."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if stop_above is not None and deepest > stop_above:
                    return deepest
        elif char in "]}":
            depth -= 1
    return deepest


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
    data = load_json(stripped, "prompt payload (it starts with '{')")
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
        data = load_json(payload, "payload")
        if isinstance(data, dict):
            rid = data.get("request_id")
            request_id = rid if isinstance(rid, str) and _REQUEST_ID.match(rid) else None
            reply_to = data.get("reply_to") if isinstance(data.get("reply_to"), str) else None
    except (UnicodeDecodeError, ProtocolError):
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
    inference_s: Seconds | None = None
    new_tokens: Count | None = None
    prompt_tokens: Count | None = None  # the tokens its prefill read (a select step: its ranking's)
    cached_tokens: Count | None = None  # of those, taken from the engine's prefix cache, not prefilled
    detail: str | None = None


Score = Annotated[float, Field(ge=-1e6, le=1e6)]


class LayerTrace(Frozen):
    layer: int
    kind: Literal["propose", "aggregate", "select"]
    answered: list[TraceEntry]
    dropped: list[TraceEntry] = []
    requested: int  # how many proposers this layer asked for ({self} + k)
    # kind "select": which proposal of the layer before is the answer (index into its `answered`), how the
    # ranker scored each (absent when only one answered: nothing was ranked)
    ranker: SelectRanker | None = None
    scores: list[Score] | None = Field(None, max_length=1001)
    picked: int | None = Field(None, ge=0, le=1000)


class Usage(Frozen):
    """Token counts in OpenAI's terms, plus what the whole MoA run generated on every board."""

    prompt_tokens: int  # the user's prompt, rendered by the origin's chat template
    completion_tokens: int  # the answer (the final aggregation's new tokens)
    total_tokens: int
    generated_tokens: int  # new tokens of every inference of the run (all layers, all boards)
    ranking_prompt_tokens: int | None = None  # aggregation = select: what its ranking read (no token generated)


class Answer(Frozen):
    type: Literal["answer"] = "answer"
    request_id: str
    device: str
    response: str
    layers: int
    proposers: int
    latency_s: float
    inferences: int
    trace: list[LayerTrace]
    usage: Usage | None = None


class ErrorBody(Frozen):
    code: str
    message: str


class ErrorAnswer(Frozen):
    request_id: str
    device: str
    error: ErrorBody


class Chunk(Frozen):
    """A piece of a streamed final aggregation (`"stream": true`), before the one answer."""

    type: Literal["chunk"] = "chunk"
    request_id: str
    index: int
    delta: str


class Status(Frozen):
    # Newer agents may add fields: ignore them (a status is read by every version in the mesh).
    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)
    v: int = PROTOCOL_VERSION
    type: Literal["status"] = "status"
    device: DeviceId
    online: bool
    model_id: str | None = Field(None, max_length=128)
    alpha_s: Seconds | None = None
    queue_length: Count | None = None
    queue_bytes: Bytes | None = None
    queue_cap_bytes: Bytes | None = None
    memory_available_bytes: Bytes | None = None
    busy: bool | None = None
    healthy: bool | None = None  # False: its engine hangs; it refuses new work until it recovers
    version: str | None = Field(None, max_length=64)
    uptime_s: Annotated[float, Field(ge=0, le=10**10)] | None = None
    heartbeat_s: Seconds | None = None
    answered: Count | None = None  # own users' prompts answered since start
    failed: Count | None = None  # own users' prompts that got an error
    served: Count | None = None  # inferences run (own and peers')
    latency_p50_s: Seconds | None = None  # over the last 100 answers to own users
    sent_at: Annotated[float, Field(ge=0, le=10**11)] | None = None  # sender's wall clock


# ---------------------------------------------------------------- internal: agent to agent


class WireChatMessage(Frozen):
    role: Literal["system", "user", "assistant"]
    content: str


class InternalMessage(Frozen):
    v: Literal[1] = PROTOCOL_VERSION
    msg_id: str = Field(default_factory=new_id, min_length=8, max_length=64)
    sender: DeviceId
    request_id: RequestId
    layer: int = Field(ge=1, le=1001)
    task_id: str = Field(min_length=8, max_length=64)  # the correlation id of task -> ack -> result


class TaskMessage(InternalMessage):
    type: Literal["task"] = "task"
    messages: list[WireChatMessage] = Field(min_length=1, max_length=8)
    max_new_tokens: int = Field(ge=1, le=10**6)
    temperature: float = Field(ge=0, le=2)


class TaskAckMessage(InternalMessage):
    type: Literal["task_ack"] = "task_ack"
    accepted: bool
    reason: Literal["busy", "too_large", "invalid_request", "unhealthy"] | None = None  # when refused
    queue_length: Count = 0
    eta_s: Seconds = 0.0  # the proposer's estimate of when the result will be ready


class ResultMessage(InternalMessage):
    type: Literal["result"] = "result"
    text: str | None = None
    error: ErrorBody | None = None
    inference_s: Seconds = 0.0
    new_tokens: Count = 0
    prompt_tokens: Count | None = None  # what the prefill read (the simulator prices prefill apart)
    cached_tokens: Count | None = None  # of those, taken from the prefix cache (absent: none, or an older agent)

    @model_validator(mode="after")
    def _cached_within_prompt(self) -> ResultMessage:
        if self.cached_tokens is not None and self.cached_tokens > (self.prompt_tokens or 0):
            raise ValueError("cached_tokens exceeds prompt_tokens")
        return self


Internal = Annotated[TaskMessage | TaskAckMessage | ResultMessage, Field(discriminator="type")]
_INTERNAL = TypeAdapter(Internal)


def decode_internal(payload: bytes) -> TaskMessage | TaskAckMessage | ResultMessage:
    try:
        data = load_json(payload, "internal message")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"internal message is not UTF-8: {exc}") from None
    if isinstance(data, dict) and data.get("v") not in (None, PROTOCOL_VERSION):
        raise ProtocolError(f"protocol version {data.get('v')!r} not supported", code="unsupported_version")
    try:
        return _INTERNAL.validate_python(data)
    except ValidationError as exc:
        raise ProtocolError(describe_validation(exc)) from None


def decode_status(payload: bytes) -> Status:
    try:
        data = load_json(payload, "status")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"status is not UTF-8: {exc}") from None
    try:
        return Status.model_validate(data)
    except ValidationError as exc:
        raise ProtocolError(describe_validation(exc)) from None


def encode(message: BaseModel) -> bytes:
    return message.model_dump_json(exclude_none=True).encode("utf-8")

