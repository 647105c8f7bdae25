"""An agent process in its users' tools: Prometheus metrics scraped over HTTP, Home Assistant discovery on a real
Mosquitto (published, re-published when Home Assistant comes online, removed when the agent is decommissioned)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

import pytest

from edge_agent.local.mesh import LocalMesh
from edge_agent.mqtt.transport import BrokerSettings, PahoTransport

pytestmark = pytest.mark.slow


class Collector:
    """A plain MQTT client collecting every message on its subscriptions."""

    def __init__(self, broker, *topics: str):
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.transport = PahoTransport(BrokerSettings(host=broker.host, port=broker.port),
                                       client_id=f"collector-{uuid.uuid4().hex[:8]}", on_message=self._on)
        for topic in topics:
            self.transport.subscribe(topic, 1)
        self.transport.connect()

    def _on(self, message) -> None:
        with self._lock:
            self.messages.append((message.topic, message.payload, message.retain))

    def on(self, topic_prefix: str) -> list[tuple[str, bytes, bool]]:
        with self._lock:
            return [m for m in self.messages if m[0].startswith(topic_prefix)]

    def wait(self, predicate, timeout_s: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self.transport.close()


def scrape(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})?) (\S+)$", line)
        if match:
            values[match.group(1)] = float(match.group(3))
    return values


def test_metrics_and_home_assistant_from_agent_processes(broker, topic_root, tmp_path):
    prefix = f"ha{uuid.uuid4().hex[:6]}"
    engine = {"kind": "synthetic", "synthetic_service_s": 0.02, "warmup": False}
    with LocalMesh(2, engine=engine, topic_root=topic_root, workdir=tmp_path, broker=broker, metrics=True,
                   home_assistant={"prefix": prefix}) as mesh:
        ha = Collector(broker, f"{prefix}/device/+/config")
        try:
            assert ha.wait(lambda: len({t for t, _, _ in ha.on(prefix)}) == 2), "no discovery config"
            _, payload, retained = ha.on(f"{prefix}/device/edgemoa_agent1/")[0]
            config = json.loads(payload)
            assert retained and config["state_topic"] == f"{topic_root}/agent1/status"
            queue = next(c for c in config["components"].values() if c["unique_id"].endswith("queue_length"))
            assert queue["availability"][0]["topic"] == f"{topic_root}/agent1/status"
            assert len({c["unique_id"] for c in config["components"].values()}) == len(config["components"])

            with mesh.client() as client:
                for i in range(3):
                    answer = client.ask("agent1", f"question {i}", layers=1, proposers=1, timeout_s=30)
                    assert "response" in answer
            values = {}

            def counted() -> bool:  # gauges follow the heartbeat; counters at once
                values.update(scrape(mesh.metrics_url("agent1")))
                return values.get("edgemoa_peers_alive") == 1.0

            assert ha.wait(counted, 10)
            assert values['edgemoa_prompt_latency_seconds_count{layers="1",proposers="1"}'] == 3
            assert values['edgemoa_tasks_served_total{origin="own"}'] == 6  # a proposal and the aggregation each
            assert scrape(mesh.metrics_url("agent2"))['edgemoa_tasks_served_total{origin="peer"}'] == 3
            assert 'edgemoa_build_info{device="agent1",model="synthetic",version="0.1.0"}' in values

            seen = len(ha.on(prefix))
            raw = Collector(broker)
            raw.transport.publish(f"{prefix}/status", b"online", qos=1)  # Home Assistant restarted
            assert ha.wait(lambda: len(ha.on(prefix)) >= seen + 2), "not re-published on Home Assistant's birth"
            raw.close()

            mesh.stop_agent("agent1")
            done = subprocess.run([sys.executable, "-m", "edge_agent", "agent", "--config",
                                   str(mesh.config_path("agent1")), "--decommission"],
                                  capture_output=True, text=True, timeout=60, check=False)
            assert done.returncode == 0, done.stderr
            later = Collector(broker, f"{prefix}/device/+/config", f"{topic_root}/+/status")
            time.sleep(1.0)
            retained_now = {t for t, p, r in later.messages if r and p}
            later.close()
            assert f"{prefix}/device/edgemoa_agent1/config" not in retained_now
            assert f"{topic_root}/agent1/status" not in retained_now
            assert f"{prefix}/device/edgemoa_agent2/config" in retained_now
        finally:
            ha.close()
