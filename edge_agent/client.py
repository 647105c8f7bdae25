"""A user-side MQTT client: ask an agent, follow the mesh's status. Used by the CLI, the demo and the tests."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from .errors import PeerTimeoutError, ProtocolError
from .protocol import Status, decode_status, new_id
from .topics import Topics
from .transport import BrokerSettings, PahoTransport, RawMessage


class MoaClient:
    """Publishes prompts with a Response Topic (and `reply_to` in the payload, for MQTT 3.1.1 and bridges)."""

    def __init__(self, settings: BrokerSettings, *, topic_root: str = "moa/v1", client_id: str | None = None):
        self.topics = Topics(topic_root)
        self._pending: dict[str, Future] = {}
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

    def __enter__(self) -> MoaClient:  # noqa: PYI034  # py3.10: no typing.Self
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- asking --
    def submit(self, device: str, prompt: str, *, request_id: str | None = None, **options) -> Future:
        """Send a prompt; the future resolves to the answer or error JSON (a dict)."""
        request_id = request_id or new_id()[:16]
        payload = {"prompt": prompt, "request_id": request_id, "reply_to": self.topics.answer(device, request_id)}
        payload.update({key: value for key, value in options.items() if value is not None})
        return self.submit_raw(device, json.dumps(payload).encode(), request_id)

    def submit_raw(self, device: str, payload: bytes, request_id: str) -> Future:
        """Publish any payload as a prompt, with the Response Topic of `request_id`'s answer topic."""
        reply_topic = self.topics.answer(device, request_id)
        future: Future = Future()
        with self._lock:
            self._pending[reply_topic] = future
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
            future = self._pending.pop(message.topic, None)
        if future is not None and not future.done():
            try:
                future.set_result(json.loads(message.payload))
            except ValueError as exc:
                future.set_exception(ProtocolError(f"answer is not JSON: {exc}"))
