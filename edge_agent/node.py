"""The composition root: builds one agent from its config and wires transport, journal, memory and engine."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from functools import partial

from .admission import Admission
from .agent import Agent
from .config import AgentConfig, MqttSection
from .engine import create_engine
from .engine.worker import InferenceWorker
from .errors import ConfigError
from .journal import Journal
from .memory import MemoryProbe
from .transport import BrokerSettings, PahoTransport

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
    return Agent(
        config=config, engine=engine, journal=open_journal(config),
        admission=Admission(queue=config.queue, memory=MemoryProbe(config.queue.memory_limit_mb),
                            kv_bytes_per_token=engine.kv_bytes_per_token,
                            row_charge=getattr(engine, "row_charge_bytes", None)),
        worker=InferenceWorker(engine, max_batch=config.engine.max_batch),
        transport_factory=partial(PahoTransport, settings),
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
