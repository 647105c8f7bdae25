"""MQTT transport: the only module that imports paho. It hands raw messages over and never decodes them."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..errors import TransportError
from .api import PublishedHandler, RawMessage, Will

log = logging.getLogger(__name__)
__all__ = ["BrokerSettings", "PahoTransport", "RawMessage", "Will"]


@dataclass(frozen=True)
class BrokerSettings:
    """Where and how to connect; built from the `[mqtt]` config section or from CLI flags."""

    host: str = "127.0.0.1"
    port: int = 1883
    protocol: str = "v5"  # or "v311"
    keepalive_s: int = 15
    username: str | None = None
    password: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    reconnect_max_s: float = 10.0
    session_expiry_s: int = 0  # > 0: persistent session (clean start off), kept this long while away


class PahoTransport:
    """A paho-mqtt 2.x client with TCP_NODELAY, clean reconnects and re-subscription on every connect.

    `on_message`, `on_connection` and `on_published` run on paho's network thread: they must only hand the value
    over (e.g. with `loop.call_soon_threadsafe`). With `manual_ack` a received QoS 1 message is acknowledged to
    the broker only by `ack(message)`, so a receiver that dies before it journaled the message gets it again.
    """

    def __init__(
        self,
        settings: BrokerSettings,
        *,
        client_id: str,
        on_message: Callable[[RawMessage], None],
        on_connection: Callable[[bool], None] | None = None,
        on_published: PublishedHandler | None = None,
        will: Will | None = None,
        manual_ack: bool = False,
    ):
        self.settings = settings
        self._v5 = settings.protocol == "v5"
        self._on_message = on_message
        self._on_connection = on_connection or (lambda connected: None)
        self._on_published = on_published or (lambda mid: None)
        self._manual_ack = manual_ack
        self._subscriptions: dict[str, int] = {}
        # subscribe() runs on the caller's thread, the re-subscription on connect on paho's: one lock, so a topic
        # added during a (re)connect is neither missed nor iterated over while it changes
        self._subscribe_lock = threading.Lock()
        self._started = False
        self._connected = threading.Event()
        self._refused: str | None = None
        self._closing = False
        persistent = settings.session_expiry_s > 0
        if self._v5:
            self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5,
                                       manual_ack=manual_ack)
        else:
            self._client = paho.Client(
                CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311,
                clean_session=not persistent, manual_ack=manual_ack,
            )
        self._persistent = persistent
        self._client.reconnect_delay_set(min_delay=1, max_delay=max(1, int(settings.reconnect_max_s)))
        self._client.max_queued_messages_set(0)  # 0 = unbounded: never drop what we were asked to publish
        if settings.username:
            self._client.username_pw_set(settings.username, settings.password)
        if settings.tls_ca_file:
            self._client.tls_set(
                ca_certs=settings.tls_ca_file, certfile=settings.tls_cert_file, keyfile=settings.tls_key_file,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        if will:
            self._client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        self._client.on_socket_open = self._handle_socket_open
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_message = self._handle_message
        self._client.on_publish = self._handle_publish

    # -- lifecycle --
    def connect(self, timeout_s: float = 10.0) -> None:
        """Connect and start paho's network thread; raise TransportError when refused or unreachable. A second
        call (e.g. `with` on a client already connected) only waits for the connection: connecting paho again
        would open a second session under the same client id while this one is in use."""
        if self._started:
            self._wait_connected(timeout_s)
            return
        properties = None
        kwargs: dict = {}
        if self._v5:
            kwargs["clean_start"] = not self._persistent
            if self._persistent:
                properties = Properties(PacketTypes.CONNECT)
                properties.SessionExpiryInterval = self.settings.session_expiry_s
        try:
            self._client.connect(
                self.settings.host, self.settings.port, keepalive=self.settings.keepalive_s,
                properties=properties, **kwargs,
            )
        except (OSError, ssl.SSLError) as exc:
            raise TransportError(f"cannot reach broker {self.settings.host}:{self.settings.port}: {exc}") from exc
        self._client.loop_start()
        self._started = True
        try:
            self._wait_connected(timeout_s)
        except TransportError:
            self._client.loop_stop()
            self._started = False
            raise

    def _wait_connected(self, timeout_s: float) -> None:
        if not self._connected.wait(timeout_s):
            where = f"broker {self.settings.host}:{self.settings.port}"
            if self._refused:
                raise TransportError(f"{where} refused us: {self._refused}", retryable=False)
            raise TransportError(f"{where} did not answer our CONNECT within {timeout_s}s")

    def close(self) -> None:
        """Disconnect cleanly (no will) and stop the network thread."""
        self._closing = True
        self._client.disconnect()
        self._client.loop_stop()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # -- traffic --
    def subscribe(self, topic: str, qos: int = 1) -> None:
        with self._subscribe_lock:
            self._subscriptions[topic] = qos
            if self._connected.is_set():
                self._client.subscribe(topic, qos)

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> int:
        """Queue a publish; returns its id, which `on_published` reports when the broker acknowledged it."""
        properties = None
        if self._v5 and (response_topic or correlation_data):
            properties = Properties(PacketTypes.PUBLISH)
            if response_topic:
                properties.ResponseTopic = response_topic
            if correlation_data:
                properties.CorrelationData = correlation_data
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        # NO_CONN is fine: paho keeps QoS>0 messages and sends them after the reconnect.
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise TransportError(f"publish to {topic} failed: {paho.error_string(info.rc)}")
        return info.mid

    def ack(self, message: RawMessage) -> None:
        """Acknowledge a received QoS 1 message (manual_ack mode); a no-op otherwise."""
        if self._manual_ack and message.qos > 0:
            self._client.ack(message.mid, message.qos)

    # -- paho callbacks (network thread) --
    def _handle_socket_open(self, client, userdata, sock) -> None:
        # Without it a QoS 1 round trip took 44-88 ms here (Nagle + delayed ACK) instead of ~1 ms.
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # not a TCP socket (unix socket, some TLS wrappers)
            pass

    def _handle_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refused = str(reason_code)
            log.error("broker refused the connection: %s", reason_code)
            return
        with self._subscribe_lock:
            for topic, qos in self._subscriptions.items():
                client.subscribe(topic, qos)
            self._connected.set()
        log.info("connected to %s:%d", self.settings.host, self.settings.port)
        self._on_connection(True)

    def _handle_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if was_connected and not self._closing:
            log.warning("disconnected from broker (%s); reconnecting", reason_code)
            self._on_connection(False)

    def _handle_message(self, client, userdata, message) -> None:
        response_topic = correlation = None
        props = getattr(message, "properties", None)
        if props is not None:
            response_topic = getattr(props, "ResponseTopic", None)
            correlation = getattr(props, "CorrelationData", None)
        self._on_message(
            RawMessage(
                topic=message.topic, payload=bytes(message.payload), retain=bool(message.retain),
                response_topic=response_topic, correlation_data=correlation, qos=message.qos, mid=message.mid,
                dup=bool(message.dup),
            )
        )

    def _handle_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._on_published(mid)
