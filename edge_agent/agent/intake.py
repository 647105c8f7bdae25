"""A user's prompt message -> a UserRequest with the agent's defaults and limits applied, or a refusal."""

from __future__ import annotations

from ..config import LimitsSection, MoaSection
from ..errors import Refusal
from ..mqtt.api import RawMessage
from ..wire.messages import ReplyRoute, UserRequest, check_publish_topic, new_id, parse_prompt_json
from ..wire.topics import Topics


def read_prompt(message: RawMessage, *, device: str, topics: Topics, moa: MoaSection, limits: LimitsSection,
                received_at: float) -> UserRequest:
    """Raises ProtocolError when the payload is unreadable (no route known yet), Refusal when over a limit."""
    payload = parse_prompt_json(message.payload)
    request_id = payload.request_id or new_id()[:16]
    # DESIGN section 2: the MQTT v5 Response Topic, else the payload's reply_to, else the answer topic.
    reply_topic = message.response_topic or payload.reply_to or topics.answer(device, request_id)
    check_publish_topic(reply_topic)
    corr = message.correlation_data.hex() if message.correlation_data else None
    route = ReplyRoute(topic=reply_topic, correlation_data=corr, request_id=request_id)
    layers = moa.layers if payload.layers is None else payload.layers
    proposers = moa.proposers if payload.proposers is None else payload.proposers
    max_new = payload.max_new_tokens or moa.max_new_tokens
    for name, value, limit in (("layers", layers, moa.max_layers), ("proposers", proposers, moa.max_proposers),
                               ("max_new_tokens", max_new, moa.max_new_tokens_limit),
                               ("prompt length", len(payload.prompt), limits.max_prompt_chars)):
        if value > limit:
            raise Refusal(route, "invalid_request", f"{name} {value} exceeds this agent's limit of {limit}")
    return UserRequest(
        request_id=request_id, device=device, prompt=payload.prompt, reply_topic=reply_topic, correlation_data=corr,
        layers=layers, proposers=proposers, max_new_tokens=max_new,
        temperature=moa.temperature if payload.temperature is None else payload.temperature, received_at=received_at,
        deadline_at=received_at + moa.request_timeout_s, stream=payload.stream,
        aggregation=payload.aggregation or moa.aggregation, select_ranker=payload.select_ranker or moa.select_ranker,
        reference_max_chars=moa.reference_max_chars if payload.reference_max_chars is None
        else payload.reference_max_chars,
    )


def route_of(request: UserRequest) -> ReplyRoute:
    """Where an accepted request's reply goes (fixed at intake, kept in the journal)."""
    return ReplyRoute(topic=request.reply_topic, correlation_data=request.correlation_data,
                      request_id=request.request_id)
