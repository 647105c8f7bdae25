"""An in-process broker and transport, so the agent's behaviour is unit-tested without Mosquitto or sockets.

It keeps what the agent relies on from a real broker: topic filters, retained messages, wills, the v5 Response
Topic and Correlation Data, QoS 1 messages that stay unacknowledged until the receiver's `ack` and are delivered
again (dup) to the next connection of the same client id, and publish acknowledgements.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

from ..errors import TransportError
from .api import (
    ConnectionHandler,
    MessageHandler,
    PublishedHandler,
    RawMessage,
    Will,
    topic_matches,
)


class MemoryBroker:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._clients: dict[str, MemoryTransport] = {}
        self._retained: dict[str, RawMessage] = {}
        self._unacked: dict[str, dict[int, RawMessage]] = {}  # client id -> mid -> message awaiting its ack
        self._mids = itertools.count(1)
        self.published: list[RawMessage] = []  # every publish, in order, for tests to read

    def unacked(self, client_id: str) -> list[RawMessage]:
        with self._lock:
            return list(self._unacked.get(client_id, {}).values())

    # -- used by MemoryTransport --
    def attach(self, client: MemoryTransport) -> list[RawMessage]:
        with self._lock:
            self._clients[client.client_id] = client
            return [RawMessage(**{**m.__dict__, "dup": True}) for m in self._unacked.get(client.client_id, {}).values()]

    def detach(self, client: MemoryTransport, *, will: bool) -> None:
        with self._lock:
            if self._clients.get(client.client_id) is client:
                del self._clients[client.client_id]
        if will and client.will is not None:
            w = client.will
            self.publish(RawMessage(topic=w.topic, payload=w.payload, retain=w.retain, qos=w.qos))

    def subscribed(self, client: MemoryTransport, subscription: str) -> list[RawMessage]:
        with self._lock:
            return [m for topic, m in self._retained.items() if topic_matches(subscription, topic)]

    def publish(self, message: RawMessage) -> None:
        with self._lock:
            self.published.append(message)
            if message.retain:
                if message.payload:
                    self._retained[message.topic] = message
                else:
                    self._retained.pop(message.topic, None)
            targets = [c for c in self._clients.values() if c.wants(message.topic)]
        for client in targets:  # at the lower of the publish's and the subscription's QoS, as MQTT does
            qos = min(message.qos, client.granted_qos(message.topic))
            self.deliver(client, RawMessage(**{**message.__dict__, "retain": False, "qos": qos}))

    def deliver(self, client: MemoryTransport, message: RawMessage) -> None:
        if message.qos > 0:
            with self._lock:
                mid = next(self._mids)
                message = RawMessage(**{**message.__dict__, "mid": mid})
                self._unacked.setdefault(client.client_id, {})[mid] = message
        client.receive(message)

    def ack(self, client_id: str, mid: int) -> None:
        with self._lock:
            self._unacked.get(client_id, {}).pop(mid, None)


class MemoryTransport:
    """A `Transport` on a MemoryBroker. Delivery is synchronous, on the publisher's thread."""

    def __init__(self, broker: MemoryBroker, *, client_id: str, on_message: MessageHandler,
                 on_connection: ConnectionHandler | None = None, on_published: PublishedHandler | None = None,
                 will: Will | None = None, manual_ack: bool = False):
        self.broker, self.client_id, self.will = broker, client_id, will
        self._on_message = on_message
        self._on_connection = on_connection or (lambda up: None)
        self._on_published = on_published or (lambda mid: None)
        self._manual_ack = manual_ack
        self._subscriptions: dict[str, int] = {}
        self._connected = False
        self._mids = itertools.count(1)
        self.fail_publish: Callable[[str], bool] = lambda topic: False  # tests: make a publish raise

    @property
    def connected(self) -> bool:
        return self._connected

    def connect(self, timeout_s: float = 10.0) -> None:
        pending = self.broker.attach(self)
        self._connected = True
        for topic in self._subscriptions:
            for message in self.broker.subscribed(self, topic):
                self.broker.deliver(self, message)
        for message in pending:
            self.receive(message)
        self._on_connection(True)

    def close(self) -> None:
        self._connected = False
        self.broker.detach(self, will=False)

    def crash(self) -> None:
        """Drop the connection without DISCONNECT: the broker publishes the will (like a kill -9)."""
        self._connected = False
        self.broker.detach(self, will=True)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self._subscriptions[topic] = qos
        if self._connected:
            for message in self.broker.subscribed(self, topic):
                self.broker.deliver(self, RawMessage(**{**message.__dict__, "qos": min(message.qos, qos)}))

    def wants(self, topic: str) -> bool:
        return self._connected and any(topic_matches(s, topic) for s in self._subscriptions)

    def granted_qos(self, topic: str) -> int:
        return max((q for s, q in self._subscriptions.items() if topic_matches(s, topic)), default=0)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                response_topic: str | None = None, correlation_data: bytes | None = None) -> int:
        if self.fail_publish(topic):
            raise TransportError(f"publish to {topic} failed (test)")
        mid = next(self._mids)
        self.broker.publish(RawMessage(topic=topic, payload=payload, retain=retain, response_topic=response_topic,
                                       correlation_data=correlation_data, qos=qos))
        if qos > 0:
            self._on_published(mid)
        return mid

    def ack(self, message: RawMessage) -> None:
        if message.qos > 0:
            self.broker.ack(self.client_id, message.mid)

    def receive(self, message: RawMessage) -> None:
        if message.qos > 0 and not self._manual_ack:
            self.broker.ack(self.client_id, message.mid)
        self._on_message(message)
