"""What the agent needs from an MQTT connection, without paho: raw messages in, publishes out, acks both ways.

Two implementations: `transport.PahoTransport` (a real broker) and `memory_transport.MemoryTransport` (an
in-process broker for unit tests of the agent itself). Callbacks run on the transport's own thread and must only
hand the value over (`loop.call_soon_threadsafe`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class RawMessage:
    topic: str
    payload: bytes
    retain: bool = False
    response_topic: str | None = None  # MQTT v5 Response Topic property
    correlation_data: bytes | None = None  # MQTT v5 Correlation Data property
    qos: int = 0
    mid: int = 0  # the broker's packet id, for the manual acknowledgement
    dup: bool = False  # the broker re-sent it (it never saw our acknowledgement)


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    retain: bool = True
    qos: int = 1


MessageHandler = Callable[[RawMessage], None]
ConnectionHandler = Callable[[bool], None]
PublishedHandler = Callable[[int], None]  # the mid of a QoS 1 publish the broker acknowledged


class Transport(Protocol):
    """One client connection. QoS 1 messages received are acknowledged only by `ack` (the receiver decides
    when: after it journaled the message), and `publish` returns an id that `on_published` reports once the
    broker acknowledged that publish."""

    def connect(self, timeout_s: float = 10.0) -> None: ...

    def close(self) -> None: ...

    def subscribe(self, topic: str, qos: int = 1) -> None: ...

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                response_topic: str | None = None, correlation_data: bytes | None = None) -> int: ...

    def ack(self, message: RawMessage) -> None: ...

    @property
    def connected(self) -> bool: ...


TransportFactory = Callable[..., Transport]


def topic_matches(subscription: str, topic: str) -> bool:
    """MQTT topic filter matching (`+` one level, `#` the rest), as a broker does it."""
    sub, top = subscription.split("/"), topic.split("/")
    for i, level in enumerate(sub):
        if level == "#":
            return True
        if i >= len(top) or (level != "+" and level != top[i]):
            return False
    return len(sub) == len(top)
