"""The gateway's HTTP routes (Starlette): OpenAI chat completions and models, health, the mesh page and its data."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .. import __version__
from ..wire.messages import new_id
from . import chat
from .backend import AnswerTimeout, BrokerUnavailable, Delta, Final, GatewayBackend

log = logging.getLogger(__name__)
PAGE = Path(__file__).with_name("static") / "index.html"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
STARTED = int(time.time())
MAX_BODY_BYTES = 1 << 20  # a prompt is at most 64 KiB on the wire (limits.max_payload_bytes); a Pi has little RAM


def create_app(backend: GatewayBackend, *, api_key: str | None = None) -> Starlette:
    """`api_key`: every /v1 and /api route needs `Authorization: Bearer <key>` (the page and /health do not)."""

    def authorized(request: Request) -> bool:
        if not api_key:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), api_key.encode())

    def refuse() -> JSONResponse:
        return error_response(chat.RequestError(401, "a valid API key is needed: Authorization: Bearer <key>",
                                                code="invalid_api_key", type_="authentication_error"))

    async def chat_completions(request: Request) -> Response:
        if not authorized(request):
            return refuse()
        try:
            body = json.loads(await _read_body(request))
        except chat.RequestError as exc:
            return error_response(exc)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return error_response(chat.RequestError(400, "the request body is not JSON", code="invalid_request"))
        try:
            plan = chat.parse_chat_request(body)
        except chat.RequestError as exc:
            return error_response(exc)
        events = backend.ask(plan.prompt, plan.options(), stream=plan.stream)
        try:
            first = await _first_event(events, backend)
        except chat.RequestError as exc:
            await events.aclose()
            return error_response(exc)
        completion_id = f"chatcmpl-{new_id()[:24]}"
        created = int(time.time())
        if not plan.stream:
            await events.aclose()
            answer = first.answer  # without streaming the only event is the Final
            log.info("%s %s answered in %.2fs (%s inferences)", plan.model, answer.get("request_id"),
                     answer.get("latency_s", 0.0), answer.get("inferences"))
            return JSONResponse(chat.completion(completion_id, plan.model, plan.prompt, answer, created))
        return StreamingResponse(_sse(first, events, plan, completion_id, created), media_type="text/event-stream",
                                 headers=SSE_HEADERS)

    def model_object(name: str) -> dict:
        return {"id": name, "object": "model", "created": STARTED, "owned_by": f"edge-moa:{backend.device}"}

    async def models(request: Request) -> Response:
        if not authorized(request):
            return refuse()
        return JSONResponse({"object": "list", "data": [model_object(name) for name in chat.MODEL_NAMES]})

    async def model(request: Request) -> Response:
        if not authorized(request):
            return refuse()
        name = request.path_params["name"]
        try:
            chat.moa_settings(name)
        except chat.RequestError as exc:
            return error_response(exc)
        return JSONResponse(model_object(name))

    async def health(request: Request) -> Response:
        status = backend.device_status()
        ok = backend.connected
        body = {"status": "ok" if ok else "unavailable", "version": __version__, "device": backend.device,
                "broker_connected": ok, "device_online": bool(status and status.online),
                "agents_online": sum(1 for s in backend.mesh.statuses.values() if s.online)}
        return JSONResponse(body, status_code=200 if ok else 503)

    async def mesh(request: Request) -> Response:
        if not authorized(request):
            return refuse()
        return JSONResponse({"device": backend.device, "broker_connected": backend.connected,
                             **backend.mesh.snapshot()})

    async def page(request: Request) -> Response:
        return FileResponse(PAGE, media_type="text/html; charset=utf-8")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        backend.start(asyncio.get_running_loop())
        yield

    return Starlette(routes=[
        Route("/", page), Route("/health", health), Route("/api/mesh", mesh),
        Route("/v1/models", models), Route("/v1/models/{name}", model), Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ], lifespan=lifespan)


async def _read_body(request: Request) -> bytes:
    """The body, refused with 413 past MAX_BODY_BYTES whatever Content-Length claims (read in pieces)."""
    too_large = chat.RequestError(413, f"the request body exceeds {MAX_BODY_BYTES} bytes", code="too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > MAX_BODY_BYTES:
            raise too_large
        parts.append(part)
    return b"".join(parts)


async def _first_event(events: AsyncIterator[Delta | Final], backend: GatewayBackend) -> Delta | Final:
    """Wait for the first event, so that errors before any text get their own HTTP status, not a 200 stream."""
    try:
        first = await events.__anext__()
    except BrokerUnavailable as exc:
        raise chat.RequestError(503, str(exc), code="broker_unavailable", type_="service_unavailable_error") from None
    except AnswerTimeout as exc:
        raise chat.RequestError(504, str(exc), code="timeout", type_="timeout_error") from None
    if isinstance(first, Final) and "error" in first.answer:
        status = backend.device_status()
        raise chat.agent_error(first.answer, chat.retry_after(status and status.queue_length,
                                                              status and status.alpha_s))
    return first


async def _sse(first: Delta | Final, events: AsyncIterator[Delta | Final], plan: chat.PromptPlan,
               completion_id: str, created: int) -> AsyncIterator[bytes]:
    """OpenAI's chunk stream: the role, the deltas, a last chunk with finish_reason, usage if asked, [DONE]."""

    def event(data: dict) -> bytes:
        return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"

    yield event(chat.chunk(completion_id, plan.model, created, {"role": "assistant", "content": ""}))
    pending: Delta | Final | None = first
    try:
        while True:
            item = pending if pending is not None else await events.__anext__()
            pending = None
            if isinstance(item, Delta):
                yield event(chat.chunk(completion_id, plan.model, created, {"content": item.text}))
                continue
            answer = item.answer
            if "error" in answer:
                yield event(chat.agent_error(answer).body())
            else:
                log.info("%s %s streamed in %.2fs (%s inferences)", plan.model, answer.get("request_id"),
                         answer.get("latency_s", 0.0), answer.get("inferences"))
                yield event(chat.chunk(completion_id, plan.model, created, {}, "stop",
                                       moa=chat.moa_extension(answer)))
                if plan.include_usage:
                    yield event(chat.usage_chunk(completion_id, plan.model, created, plan.prompt, answer))
            break
    except (AnswerTimeout, BrokerUnavailable) as exc:
        yield event(chat.RequestError(504, str(exc), code="timeout", type_="timeout_error").body())
    except StopAsyncIteration:
        pass
    finally:  # also when the client went away mid-stream: the request is forgotten in the MQTT client now
        await events.aclose()
    yield b"data: [DONE]\n\n"


def error_response(exc: chat.RequestError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else None
    if exc.status >= 500 or exc.status == 429:
        log.warning("chat completion failed (%d %s): %s", exc.status, exc.code, exc)
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)
