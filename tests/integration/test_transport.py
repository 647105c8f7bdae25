"""PahoTransport against a real Mosquitto: one session per transport, and no subscription lost to a (re)connect."""

import threading
import time
import uuid

from edge_agent.mqtt.transport import BrokerSettings, PahoTransport


def _collecting(broker, received: list, connections: list | None = None) -> PahoTransport:
    return PahoTransport(BrokerSettings(host=broker.host, port=broker.port), client_id=f"t-{uuid.uuid4().hex[:8]}",
                         on_message=lambda m: received.append(m.topic),
                         on_connection=(connections.append if connections is not None else None))


def _publish_each(broker, topics: list[str]) -> None:
    sender = _collecting(broker, [])
    sender.connect()
    try:
        for topic in topics:
            sender.publish(topic, b"x", qos=1)
        time.sleep(1.0)
    finally:
        sender.close()


def test_connecting_twice_keeps_one_session(broker):
    """`with client.connect()` (LocalMesh.client() then `with`) once opened a second session under the same id
    while the first was in use; its CONNACK handler then raced the caller's subscriptions and could kill paho's
    thread (a calibration waited 900 s for answers that had arrived)."""
    received, connections = [], []
    transport = _collecting(broker, received, connections)
    transport.connect()
    transport.connect()  # only waits: already connected
    root = f"test/{uuid.uuid4().hex[:8]}"
    try:
        transport.subscribe(f"{root}/#", 1)
        time.sleep(0.5)
        _publish_each(broker, [f"{root}/a", f"{root}/b"])
        assert connections == [True]
        assert sorted(received) == [f"{root}/a", f"{root}/b"]
    finally:
        transport.close()


def test_subscriptions_made_while_connecting_are_all_kept(broker):
    """Topics subscribed from another thread while the connection comes up: each ends up subscribed exactly
    once, whether it was added before the CONNACK (re-subscribed on connect) or after (subscribed at once)."""
    received = []
    transport = _collecting(broker, received)
    root = f"test/{uuid.uuid4().hex[:8]}"
    topics = [f"{root}/{i}" for i in range(300)]
    adder = threading.Thread(target=lambda: [transport.subscribe(topic, 1) for topic in topics])
    adder.start()
    transport.connect()
    adder.join(10)
    try:
        time.sleep(0.5)
        _publish_each(broker, topics)
        deadline = time.monotonic() + 5
        while len(received) < len(topics) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sorted(received) == sorted(topics)
    finally:
        transport.close()
