"""The composition root: builds one agent from its config and wires transport, journal, memory and engine."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from functools import partial

from . import __version__
from .agent.admission import Admission
from .agent.journal import Journal
from .agent.loop import Agent
from .agent.memory import MemoryProbe
from .agent.metrics import AgentMetrics
from .config import AgentConfig, MqttSection
from .engine import create_engine
from .engine.worker import InferenceWorker
from .errors import ConfigError, TransportError
from .mqtt.transport import BrokerSettings, PahoTransport

log = logging.getLogger(__name__)
AGENT_SESSION_EXPIRY_S = 300  # keep QoS 1 traffic for a restarting agent this long (persistent v5 session)


def broker_settings(mqtt: MqttSection, *, persistent: bool = False) -> BrokerSettings:
    password = None
    if mqtt.password_file is not None:
        try:
            password = mqtt.password_file.read_text().strip()
        except OSError as exc:
            raise ConfigError([("mqtt.password_file", str(mqtt.password_file), f"cannot read: {exc.strerror}")])
    return BrokerSettings(
        host=mqtt.host, port=mqtt.port, protocol=mqtt.protocol, keepalive_s=mqtt.keepalive_s,
        username=mqtt.username, password=password,
        tls_ca_file=str(mqtt.tls_ca_file) if mqtt.tls_ca_file else None,
        tls_cert_file=str(mqtt.tls_cert_file) if mqtt.tls_cert_file else None,
        tls_key_file=str(mqtt.tls_key_file) if mqtt.tls_key_file else None,
        reconnect_max_s=mqtt.reconnect_max_s,
        session_expiry_s=AGENT_SESSION_EXPIRY_S if persistent else 0,
    )


def build_agent(config: AgentConfig) -> Agent:
    """Load and warm up the model first: creating an ONNX session holds the GIL, so do it before connecting."""
    settings = broker_settings(config.mqtt, persistent=True)
    started = time.perf_counter()
    engine = create_engine(config.engine)
    if config.engine.warmup:
        engine.warm_up()
    log.info("engine %s ready in %.1fs", engine.model_id, time.perf_counter() - started)
    metrics = None
    if config.metrics.enabled:
        metrics = AgentMetrics(config.agent.device_id, engine.model_id, __version__)
        port = metrics.serve(config.metrics.host, config.metrics.port)
        log.info("metrics on http://%s:%d/metrics", config.metrics.host, port)
    return Agent(
        config=config, engine=engine, journal=open_journal(config),
        admission=Admission(queue=config.queue, memory=MemoryProbe(config.queue.memory_limit_mb),
                            kv_bytes_per_token=engine.kv_bytes_per_token,
                            row_charge=getattr(engine, "row_charge_bytes", None)),
        worker=InferenceWorker(engine, max_batch=config.engine.max_batch),
        transport_factory=partial(PahoTransport, settings), metrics=metrics,
    )


def open_journal(config: AgentConfig) -> Journal:
    return Journal(config.agent.state_dir / f"{config.agent.device_id}.journal.sqlite",
                   retention_s=config.agent.answers_retention_s, keep=config.agent.answers_kept)


def run_agent(config: AgentConfig) -> None:
    """Run until SIGTERM or SIGINT, then leave cleanly (offline status, no will)."""
    agent = build_agent(config)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.stop)
        await agent.run()

    asyncio.run(main())


def decommission(config: AgentConfig) -> list[str]:
    """Remove this agent from the mesh's view: empty retained payloads on its status topic and, when Home
    Assistant discovery is on, its discovery topic (Home Assistant deletes the device). Returns the topics."""
    from .agent.ha_discovery import REMOVAL_PAYLOAD, DiscoveryAnnouncer
    from .wire.topics import Topics

    status_topic = Topics(config.mqtt.topic_root).status(config.agent.device_id)
    topics = [status_topic]
    if config.home_assistant.enabled:
        announcer = DiscoveryAnnouncer(config.agent.device_id, None, __version__, status_topic,
                                       prefix=config.home_assistant.prefix)
        topics += [item.topic for item in announcer.decommission()]
    acked = threading.Event()
    pending: set[int] = set()
    lock = threading.Lock()

    def published(mid: int) -> None:
        with lock:
            pending.discard(mid)
            if not pending:
                acked.set()

    transport = PahoTransport(broker_settings(config.mqtt), client_id=f"edge-moa-decommission-{config.agent.device_id}",
                              on_message=lambda message: None, on_published=published)
    transport.connect()
    try:
        with lock:
            for topic in topics:
                pending.add(transport.publish(topic, REMOVAL_PAYLOAD, qos=1, retain=True))
        if not acked.wait(10):
            raise TransportError("the broker did not acknowledge the removal within 10 s")
    finally:
        transport.close()
    return topics
