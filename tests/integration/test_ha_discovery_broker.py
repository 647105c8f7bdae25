"""Discovery through a real Mosquitto: the retained config a late subscriber (Home Assistant) gets, the re-publish
on Home Assistant's birth message, and the removal. The agent side goes through PahoTransport, as in the agent."""

from __future__ import annotations

import json
import threading
import uuid

from edge_agent.agent.ha_discovery import DiscoveryAnnouncer
from edge_agent.mqtt.transport import BrokerSettings, PahoTransport
from edge_agent.wire.topics import Topics
from tests.integration.mesh_helpers import TestClient, wait_until


def test_home_assistant_sees_the_config_again_after_its_birth_and_not_after_removal(broker):
    prefix = f"ha-{uuid.uuid4().hex[:8]}"
    announcer = DiscoveryAnnouncer("agent1", "tiny", "0.1.0", Topics("moa/v1").status("agent1"), prefix=prefix)
    received: list = []
    got = threading.Event()

    def on_message(message):
        received.append(message)
        got.set()

    agent = PahoTransport(BrokerSettings(host=broker.host, port=broker.port), client_id=f"a-{uuid.uuid4().hex[:6]}",
                          on_message=on_message)
    for topic in announcer.subscriptions():
        agent.subscribe(topic)
    agent.connect()
    try:
        for p in announcer.on_connected():
            agent.publish(p.topic, p.payload, qos=1, retain=p.retain)
        with TestClient(broker.host, broker.port, None) as home_assistant:  # comes up later: gets the retained one
            assert home_assistant.connect()
            home_assistant.subscribe(f"{prefix}/device/+/config")
            assert wait_until(lambda: home_assistant.received(prefix), 5)
            topic, payload = home_assistant.received(prefix)[0]
            assert topic == announcer.topic and json.loads(payload)["device"]["identifiers"] == ["edgemoa_agent1"]
            home_assistant.publish(f"{prefix}/status", "online")  # Home Assistant restarted: its birth message
            assert got.wait(5)
            for message in received:
                for p in announcer.on_message(message.topic, message.payload):
                    agent.publish(p.topic, p.payload, qos=1, retain=p.retain)
            assert wait_until(lambda: len(home_assistant.received(prefix)) == 2, 5)
            for p in announcer.decommission():
                agent.publish(p.topic, p.payload, qos=1, retain=p.retain)
            assert wait_until(lambda: len(home_assistant.received(prefix)) == 3, 5)
            assert home_assistant.received(prefix)[2][1] == b""
        with TestClient(broker.host, broker.port, None) as late:  # the broker forgot the config
            assert late.connect()
            late.subscribe(f"{prefix}/device/+/config")
            assert not wait_until(lambda: late.received(prefix), 1.0)
    finally:
        agent.close()
