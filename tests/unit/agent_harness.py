"""Agents on an in-memory broker, in one event loop: the agent's own behaviour tested without sockets or a model."""

from __future__ import annotations

import asyncio
import json
import time
from functools import partial
from pathlib import Path

from edge_agent.agent.admission import Admission
from edge_agent.agent.loop import Agent
from edge_agent.agent.memory import MemoryProbe
from edge_agent.config import AgentConfig
from edge_agent.engine.synthetic import SyntheticEngine
from edge_agent.engine.worker import InferenceWorker
from edge_agent.mqtt.api import RawMessage
from edge_agent.mqtt.memory import MemoryBroker, MemoryTransport
from edge_agent.node import open_journal
from edge_agent.wire.topics import Topics

ROOT = "moa/v1"


def agent_config(device: str, state_dir: Path, **sections) -> AgentConfig:
    data = {"agent": {"device_id": device, "state_dir": str(state_dir), "heartbeat_s": 0.2, "peer_timeout_s": 5.0},
            "moa": {"ack_timeout_s": 0.5, "task_grace_s": 1.0, "layers": 1, "proposers": 2},
            "engine": {"kind": "synthetic", "synthetic_service_s": 0.02, "seed": 1}}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return AgentConfig.model_validate(data)


def make_agent(broker: MemoryBroker, device: str, state_dir: Path, engine_class=SyntheticEngine,
               **sections) -> Agent:
    config = agent_config(device, state_dir, **sections)
    engine = engine_class(service_s=config.engine.synthetic_service_s, seed=1, max_batch=config.engine.max_batch)
    return Agent(config=config, engine=engine, journal=open_journal(config),
                 admission=Admission(queue=config.queue, memory=MemoryProbe(), kv_bytes_per_token=1024),
                 worker=InferenceWorker(engine, max_batch=config.engine.max_batch),
                 transport_factory=partial(MemoryTransport, broker))


class User:
    """A user app on the in-memory broker: publishes prompts (any bytes), collects every reply per topic."""

    def __init__(self, broker: MemoryBroker, name: str = "user"):
        self.topics = Topics(ROOT)
        self.replies: dict[str, list[dict]] = {}
        self.transport = MemoryTransport(broker, client_id=name, on_message=self._on_message)
        self.transport.subscribe(f"{ROOT}/+/answer/#", 1)
        self.transport.subscribe("apps/#", 1)
        self.transport.connect()

    def _on_message(self, message: RawMessage) -> None:
        self.replies.setdefault(message.topic, []).append(json.loads(message.payload))

    def ask(self, device: str, request_id: str, prompt: str = "Why is the sky blue?", **fields) -> str:
        payload = {"prompt": prompt, "request_id": request_id, **fields}
        self.send(device, json.dumps(payload).encode())
        return self.topics.answer(device, request_id)

    def send(self, device: str, payload: bytes, **props) -> None:
        self.transport.publish(self.topics.prompt(device), payload, qos=1, **props)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.transport.publish(topic, payload, qos=1, retain=retain)

    def finals(self, topic: str) -> list[dict]:
        """Answers and errors on a topic, without stream chunks."""
        return [r for r in self.replies.get(topic, []) if r.get("type") != "chunk"]


async def wait_for(predicate, timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def started(*agents: Agent) -> None:
    for agent in agents:
        await agent.start()
    await wait_for(lambda: all(not a._discovering for a in agents), what="discovery to end")
    await wait_for(lambda: all(len(a._alive()) == len(agents) - 1 for a in agents), what="peers to be seen")


async def stopped(*agents: Agent) -> None:
    for agent in agents:
        await agent.shutdown()


def kill(agent: Agent) -> None:
    """As kill -9: the connection drops (the will fires), nothing more happens in that process."""
    for task in agent._periodic:
        task.cancel()
    agent._on_done = lambda task, outcome: None
    agent._on_raw = lambda message: None
    agent.transport.crash()
    agent.worker.close(timeout_s=0.05)
    agent.journal.close()
