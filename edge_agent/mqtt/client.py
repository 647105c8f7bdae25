"""A user-side MQTT client: ask an agent, follow the mesh's status. Used by the CLI, the demo and the tests."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from ..errors import PeerTimeoutError, ProtocolError
from ..wire.messages import Status, decode_status, new_id
from ..wire.topics import Topics
from .transport import BrokerSettings, PahoTransport, RawMessage


class MoaClient:
    """Publishes prompts with a Response Topic (and `reply_to` in the payload, for MQTT 3.1.1 and bridges)."""

    def __init__(self, settings: BrokerSettings, *, topic_root: str = "moa/v1", client_id: str | None = None):
        self.topics = Topics(topic_root)
        self._pending: dict[str, Future] = {}
        self._chunk_listeners: dict[str, Callable[[dict], None]] = {}  # reply topic -> called per stream chunk
        self._answer_wildcards: set[str] = set()  # devices whose answer/+ we subscribed once (long-lived apps)
        self._status: dict[str, Status] = {}
        self._status_listeners: list[Callable[[Status], None]] = []
        self._lock = threading.Lock()
        self._transport = PahoTransport(settings, client_id=client_id or f"edge-moa-client-{new_id()[:12]}",
                                        on_message=self._on_message)

    def connect(self, timeout_s: float = 10.0) -> MoaClient:
        self._transport.connect(timeout_s)
        return self

    def close(self) -> None:
        self._transport.close()

    @property
    def connected(self) -> bool:
        return self._transport.connected

    def listen_answers(self, device: str) -> None:
        """Subscribe once to every answer topic of `device`, instead of one subscription per request.

        For long-lived apps (the gateway): the transport cannot unsubscribe, so per-request subscriptions
        would pile up on the broker. Answers to other apps' requests on that device are ignored.
        """
        self._answer_wildcards.add(device)
        self._transport.subscribe(self.topics.answer(device, "+"), 1)

    def __enter__(self) -> MoaClient:  # noqa: PYI034  # py3.10: no typing.Self
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- asking --
    def submit(self, device: str, prompt: str, *, request_id: str | None = None,
               on_chunk: Callable[[dict], None] | None = None, **options) -> Future:
        """Send a prompt; the future resolves to the answer or error JSON (a dict). `stream=True` with
        `on_chunk` gets the final aggregation's chunks as they come (docs/protocol.md "Streaming")."""
        request_id = request_id or new_id()[:16]
        payload = {"prompt": prompt, "request_id": request_id, "reply_to": self.topics.answer(device, request_id)}
        payload.update({key: value for key, value in options.items() if value is not None})
        return self.submit_raw(device, json.dumps(payload).encode(), request_id, on_chunk)

    def submit_raw(self, device: str, payload: bytes, request_id: str,
                   on_chunk: Callable[[dict], None] | None = None) -> Future:
        """Publish any payload as a prompt, with the Response Topic of `request_id`'s answer topic.

        Stream chunks (`"type": "chunk"`, docs/protocol.md "Streaming") go to `on_chunk` on the network thread;
        the future resolves with the one final answer or error.
        """
        reply_topic = self.topics.answer(device, request_id)
        future: Future = Future()
        with self._lock:
            self._pending[reply_topic] = future
            if on_chunk is not None:
                self._chunk_listeners[reply_topic] = on_chunk
        future.add_done_callback(lambda _: self._forget(reply_topic))
        if device not in self._answer_wildcards:
            self._transport.subscribe(reply_topic, 1)
        self._transport.publish(self.topics.prompt(device), payload, qos=1, response_topic=reply_topic,
                                correlation_data=request_id.encode())
        return future

    def ask(self, device: str, prompt: str, *, timeout_s: float = 300.0, **options) -> dict:
        future = self.submit(device, prompt, **options)
        try:
            return future.result(timeout=timeout_s)
        except TimeoutError:
            raise PeerTimeoutError(f"no answer from {device} within {timeout_s:.0f}s") from None

    def _forget(self, reply_topic: str) -> None:
        with self._lock:
            self._pending.pop(reply_topic, None)
            self._chunk_listeners.pop(reply_topic, None)

    # -- status --
    def watch_status(self, listener: Callable[[Status], None] | None = None) -> None:
        if listener:
            self._status_listeners.append(listener)
        self._transport.subscribe(self.topics.all_status(), 1)

    def statuses(self) -> dict[str, Status]:
        with self._lock:
            return dict(self._status)

    def wait_for_agents(self, devices: list[str], timeout_s: float = 60.0) -> None:
        """Block until every device in `devices` reports online."""
        self.watch_status()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            online = {d for d, s in self.statuses().items() if s.online}
            if set(devices) <= online:
                return
            time.sleep(0.05)
        missing = sorted(set(devices) - {d for d, s in self.statuses().items() if s.online})
        raise PeerTimeoutError(f"agents not online after {timeout_s:.0f}s: {', '.join(missing)}")

    # -- network thread --
    def _on_message(self, message: RawMessage) -> None:
        parsed = self.topics.parse(message.topic)
        if parsed and parsed[1] == "status":
            try:
                status = decode_status(message.payload)
            except ProtocolError:
                return
            with self._lock:
                self._status[status.device] = status
            for listener in self._status_listeners:
                listener(status)
            return
        with self._lock:
            future = self._pending.get(message.topic)
            on_chunk = self._chunk_listeners.get(message.topic)
        if future is None or future.done():
            return
        try:
            data = json.loads(message.payload)
        except ValueError as exc:
            future.set_exception(ProtocolError(f"answer is not JSON: {exc}"))
            return
        if isinstance(data, dict) and data.get("type") == "chunk":  # a stream chunk: the answer is still to come
            if on_chunk is not None:
                on_chunk(data)
            return
        future.set_result(data)
