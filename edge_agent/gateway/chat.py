"""OpenAI chat-completions requests into agent prompts and agent answers back into OpenAI JSON: pure, no I/O."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

_MOA_NAME = re.compile(r"^moa-M(\d{1,2})-k(\d{1,2})$")
MODEL_NAMES = ("moa", "single", "moa-M1-k1", "moa-M1-k2", "moa-M1-k3", "moa-M2-k2", "moa-M2-k3", "moa-M3-k2")
ROLE_LABELS = {"user": "User", "assistant": "Assistant", "tool": "Tool", "function": "Tool"}


class RequestError(Exception):
    """A request the gateway refuses itself: an HTTP status and an OpenAI-style error body."""

    def __init__(self, status: int, message: str, *, code: str, type_: str = "invalid_request_error",
                 param: str | None = None, retry_after_s: int | None = None):
        super().__init__(message)
        self.status, self.code, self.type, self.param, self.retry_after_s = status, code, type_, param, retry_after_s

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.type, "param": self.param, "code": self.code}}


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_calls, ...: accepted, not used

    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    """The fields of POST /v1/chat/completions we read; OpenAI's other fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str = "moa"
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    layers: int | None = Field(None, ge=0)  # extra body fields: override the model name's M and k
    proposers: int | None = Field(None, ge=0)
    n: int | None = Field(None, ge=1, le=1)


@dataclass(frozen=True)
class PromptPlan:
    """What goes to the agent for one chat request."""

    model: str
    prompt: str
    layers: int | None
    proposers: int | None
    max_new_tokens: int | None
    temperature: float | None
    stream: bool
    include_usage: bool

    def options(self) -> dict[str, Any]:
        return {"layers": self.layers, "proposers": self.proposers, "max_new_tokens": self.max_new_tokens,
                "temperature": self.temperature}


def parse_chat_request(body: Any) -> PromptPlan:
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object", code="invalid_request")
    try:
        request = ChatRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RequestError(400, f"{where}: {first['msg']}", code="invalid_request", param=where) from None
    layers, proposers = moa_settings(request.model)
    if request.layers is not None:
        layers = request.layers
    if request.proposers is not None:
        proposers = request.proposers
    return PromptPlan(
        model=request.model, prompt=render_messages(request.messages), layers=layers, proposers=proposers,
        max_new_tokens=request.max_completion_tokens or request.max_tokens, temperature=request.temperature,
        stream=request.stream, include_usage=bool((request.stream_options or {}).get("include_usage")),
    )


def moa_settings(model: str) -> tuple[int | None, int | None]:
    """`moa` = the board's defaults (None, None), `single` = M=0, `moa-M<m>-k<k>` = M=m, k=k."""
    if model == "moa":
        return None, None
    if model == "single":
        return 0, 0
    match = _MOA_NAME.match(model)
    if match:
        return int(match.group(1)), int(match.group(2))
    raise RequestError(404, f"the model {model!r} does not exist: use moa, single or moa-M<m>-k<k> "
                       "(GET /v1/models lists some)", code="model_not_found", param="model")


def render_messages(messages: list[ChatMessage]) -> str:
    """The single prompt the agent gets (docs/ecosystem.md "Conversations").

    System (and developer) messages come first, joined by blank lines. One user message alone is sent as it is;
    a conversation becomes a transcript, one `User: ...` / `Assistant: ...` paragraph per turn, ending with the
    last message, which the agent's chat template then wraps as the user's turn.
    """
    system: list[str] = []
    turns: list[tuple[str, str]] = []
    for i, message in enumerate(messages):
        text = message_text(message, i)
        if message.role in ("system", "developer"):
            system.append(text)
        elif message.role in ROLE_LABELS:
            turns.append((message.role, text))
        else:
            raise RequestError(400, f"messages.{i}.role: unknown role {message.role!r}", code="invalid_request",
                               param=f"messages.{i}.role")
    if not turns or not any(role == "user" for role, _ in turns):
        raise RequestError(400, "messages: at least one user message is needed", code="invalid_request",
                           param="messages")
    if len(turns) == 1:
        body = turns[0][1]
    else:
        body = "\n\n".join(f"{ROLE_LABELS[role]}: {text}" for role, text in turns)
    prompt = "\n\n".join([*system, body]).strip()
    if not prompt:
        raise RequestError(400, "messages: the conversation holds no text", code="invalid_request",
                           param="messages")
    return prompt


def message_text(message: ChatMessage, index: int) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    texts = []
    for part in message.content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise RequestError(400, f"messages.{index}.content: only text parts are supported, not "
                               f"{part.get('type')!r}", code="invalid_request", param=f"messages.{index}.content")
        texts.append(part["text"])
    return "\n".join(texts)


# ---------------------------------------------------------------- answers back


def approx_tokens(text: str) -> int:
    """About 4 characters per token for English (OpenAI's rule of thumb), for answers of agents without `usage`."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


def usage(prompt: str, answer: dict) -> dict:
    known = answer.get("usage")
    if isinstance(known, dict) and {"prompt_tokens", "completion_tokens"} <= known.keys():
        prompt_tokens, completion_tokens = int(known["prompt_tokens"]), int(known["completion_tokens"])
    else:
        prompt_tokens, completion_tokens = approx_tokens(prompt), approx_tokens(answer.get("response", ""))
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def moa_extension(answer: dict) -> dict:
    """The MoA's own account, in an extra `moa` field OpenAI clients ignore (the mesh page shows it)."""
    return {key: answer[key] for key in ("device", "request_id", "layers", "proposers", "latency_s", "inferences",
                                         "trace") if key in answer}


def completion(completion_id: str, model: str, prompt: str, answer: dict, created: int | None = None) -> dict:
    return {
        "id": completion_id, "object": "chat.completion", "created": created or int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer["response"]},
                     "finish_reason": "stop", "logprobs": None}],
        "usage": usage(prompt, answer), "system_fingerprint": None, "moa": moa_extension(answer),
    }


def chunk(completion_id: str, model: str, created: int, delta: dict, finish_reason: str | None = None,
          **extra: Any) -> dict:
    return {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}], **extra}


def usage_chunk(completion_id: str, model: str, created: int, prompt: str, answer: dict) -> dict:
    return {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [], "usage": usage(prompt, answer)}


# ---------------------------------------------------------------- agent errors to HTTP

_AGENT_ERRORS = {  # agent error code -> (HTTP status, OpenAI error type)
    "queue_full": (429, "rate_limit_error"),
    "too_large": (400, "invalid_request_error"),
    "invalid_request": (400, "invalid_request_error"),
    "timeout": (504, "timeout_error"),
    "no_peers": (503, "service_unavailable_error"),
}


def agent_error(answer: dict, retry_after_s: int = 5) -> RequestError:
    """The agent's `{"error": {code, message}}` as the HTTP error a client of an OpenAI server expects."""
    error = answer.get("error") or {}
    code = str(error.get("code") or "agent_error")
    status, type_ = _AGENT_ERRORS.get(code, (502, "upstream_error"))
    message = f"{answer.get('device', 'agent')}: {error.get('message') or code}"
    return RequestError(status, message, code=code, type_=type_,
                        retry_after_s=retry_after_s if status == 429 else None)


def retry_after(queue_length: int | None, alpha_s: float | None) -> int:
    """Seconds until the board's queue has room again, roughly: its queue times its mean inference time."""
    if not queue_length or not alpha_s:
        return 5
    return int(min(120, max(1, math.ceil(queue_length * alpha_s))))
