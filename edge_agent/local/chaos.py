"""Fault scenarios against real brokers and agent processes, counting every prompt: answered once, errored once,
lost, duplicated. Used by tests/chaos (short runs) and tools/bench/chaos.py (long runs).

A user app here does what a careful one does with idempotent request ids: it re-sends a prompt that got no reply
after `retry_after_s`, with the same request id (the agent answers it once; a finished one from its store).
"""

from __future__ import annotations

import json
import logging
import random
import signal
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..mqtt.api import RawMessage
from ..mqtt.broker_process import MosquittoProcess, wait_for_port
from ..mqtt.transport import BrokerSettings, PahoTransport
from ..wire.topics import Topics
from .mesh import LocalMesh

log = logging.getLogger(__name__)

PERSISTENT_CONF = """per_listener_settings false
listener {port} 127.0.0.1
allow_anonymous true
set_tcp_nodelay true
persistence true
persistence_location {dir}/
autosave_interval 1
max_queued_messages 100000
max_inflight_messages 100
max_packet_size 1048576
log_dest stdout
log_type error
log_type warning
"""


class PersistentMosquitto(MosquittoProcess):
    """Mosquitto with persistence on, that can be killed (-9) and started again on the same port and database."""

    def render_conf(self) -> str:
        return PERSISTENT_CONF.format(port=self.port, dir=self._dir)

    def kill(self) -> None:
        self._proc.send_signal(signal.SIGKILL)
        self._proc.wait(10)
        self._log_file.close()

    def restart(self) -> None:
        self.start()
        wait_for_port(self.host, self.port, 10)


@dataclass
class Outcome:
    """What became of every prompt a scenario sent."""

    scenario: str
    prompts: int = 0  # distinct request ids the broker acknowledged
    answered: int = 0
    errored: int = 0
    lost: int = 0  # acknowledged, no reply by the end
    duplicated: int = 0  # more than one distinct reply (two executions, or an answer and an error)
    redundant: int = 0  # the same reply delivered again (a stored answer re-sent): harmless by design
    errors: dict[str, int] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def line(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in self.extra.items())
        return (f"{self.scenario:28s} prompts={self.prompts} answered={self.answered} errored={self.errored} "
                f"lost={self.lost} duplicated={self.duplicated} redundant={self.redundant} "
                f"errors={dict(self.errors)} {extra}").rstrip()


class PromptLedger:
    """A user app over MQTT that sends prompts with unique ids and counts every reply it gets for each."""

    def __init__(self, settings: BrokerSettings, topic_root: str, *, name: str = "ledger"):
        self.topics = Topics(topic_root)
        self._lock = threading.Lock()
        self.sent_at: dict[str, float] = {}
        self.sends: Counter[str] = Counter()
        self.acked: set[str] = set()
        self._mid_to_id: dict[int, str] = {}
        self._last_send: dict[str, tuple[str, bytes]] = {}
        self.replies: dict[str, list[bytes]] = defaultdict(list)
        self.first_reply_at: dict[str, float] = {}  # monotonic, the first final reply of each request id
        self.chunks: Counter[str] = Counter()
        persistent = BrokerSettings(**{**settings.__dict__, "session_expiry_s": 600})
        self._transport = PahoTransport(persistent, client_id=f"edge-moa-{name}-{random.getrandbits(32):08x}",
                                        on_message=self._on_message, on_published=self._on_published)
        self._transport.subscribe(f"{topic_root}/+/answer/#", 1)

    def __enter__(self) -> PromptLedger:  # noqa: PYI034
        self._transport.connect()
        return self

    def __exit__(self, *exc) -> None:
        self._transport.close()

    def send(self, device: str, request_id: str, prompt: str = "Why is the sky blue?", **fields) -> None:
        body = json.dumps({"prompt": prompt, "request_id": request_id,
                           "reply_to": self.topics.answer(device, request_id), **fields}).encode()
        self.send_raw(device, request_id, body)

    def send_raw(self, device: str, request_id: str, payload: bytes) -> None:
        with self._lock:
            self.sends[request_id] += 1
            self.sent_at.setdefault(request_id, time.monotonic())
            self._last_send[request_id] = (device, payload)
        mid = self._transport.publish(self.topics.prompt(device), payload, qos=1,
                                      response_topic=self.topics.answer(device, request_id),
                                      correlation_data=request_id.encode())
        with self._lock:
            self._mid_to_id[mid] = request_id

    def retry_unanswered(self, older_than_s: float) -> int:
        """Re-send, with the same request id, every prompt without a reply for `older_than_s`."""
        now = time.monotonic()
        with self._lock:
            due = [(rid, *self._last_send[rid]) for rid, t in self.sent_at.items()
                   if not self.replies.get(rid) and now - t > older_than_s]
            for rid, _, _ in due:
                self.sent_at[rid] = now
        for rid, device, payload in due:
            self.send_raw(device, rid, payload)
        return len(due)

    def unanswered(self) -> list[str]:
        with self._lock:
            return [rid for rid in self.sends if not self.replies.get(rid)]

    def wait(self, timeout_s: float, retry_after_s: float | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        while self.unanswered() and time.monotonic() < deadline:
            if retry_after_s is not None:
                self.retry_unanswered(retry_after_s)
            time.sleep(0.1)

    def outcome(self, scenario: str, only: set[str] | None = None) -> Outcome:
        out = Outcome(scenario)
        errors: Counter[str] = Counter()
        with self._lock:
            ids = [rid for rid in self.sends if only is None or rid in only]
            for rid in ids:
                replies = self.replies.get(rid, [])
                if rid not in self.acked and not replies:
                    continue  # the broker never took it: the app knows it was not sent
                out.prompts += 1
                distinct = set(replies)
                if not replies:
                    out.lost += 1
                    continue
                out.redundant += len(replies) - len(distinct) - max(0, self.sends[rid] - 1)
                out.redundant = max(out.redundant, 0)
                if len(distinct) > 1:
                    out.duplicated += 1
                first = json.loads(replies[0])
                if "error" in first:
                    out.errored += 1
                    errors[first["error"]["code"]] += 1
                else:
                    out.answered += 1
        out.errors = dict(errors)
        return out

    def _on_published(self, mid: int) -> None:
        with self._lock:
            rid = self._mid_to_id.pop(mid, None)
            if rid is not None:
                self.acked.add(rid)

    def _on_message(self, message: RawMessage) -> None:
        rid = message.topic.rsplit("/", 1)[-1]
        try:
            if json.loads(message.payload).get("type") == "chunk":
                with self._lock:
                    self.chunks[rid] += 1
                return
        except (ValueError, AttributeError):
            pass
        with self._lock:
            self.replies[rid].append(bytes(message.payload))
            self.first_reply_at.setdefault(rid, time.monotonic())


# ---------------------------------------------------------------- fuzzing


def fuzz_payloads(rng: random.Random, n: int, *, devices: list[str], request_ids: list[str]) -> list[bytes]:
    """Hostile bytes of every kind the wire can carry (issue 10): random, truncated, nested, non-finite, huge,
    wrong types and versions, replayed message ids, results for unknown requests, forged senders and statuses."""
    good_task = {"v": 1, "type": "task", "msg_id": "m" * 16, "sender": devices[0], "request_id": "r1", "layer": 1,
                 "task_id": "t" * 16, "messages": [{"role": "user", "content": "hi"}], "max_new_tokens": 4,
                 "temperature": 0.5}
    makers = [
        lambda: bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300))),
        lambda: json.dumps(good_task).encode()[: rng.randint(1, 60)],
        lambda: b'{"prompt": ' + b"[" * rng.randint(100, 30000) + b"]",
        lambda: b'{"prompt": "x", "temperature": NaN}',
        lambda: b'{"prompt": "x", "max_new_tokens": 1e400}',
        lambda: json.dumps({"prompt": "x", "layers": 10**30}).encode(),
        lambda: json.dumps({"prompt": 5, "request_id": ["a"]}).encode(),
        lambda: json.dumps({**good_task, "v": rng.choice([0, 2, 99, "1", None])}).encode(),
        lambda: json.dumps({**good_task, "type": "task_ack", "accepted": True, "eta_s": rng.choice(
            [1e308, -5, "soon"]), "request_id": rng.choice(request_ids)}).encode(),
        lambda: b'{"v":1,"type":"task_ack","msg_id":"mmmmmmmmmmmm","sender":"x","request_id":"r","layer":1,'
                b'"task_id":"tttttttt","accepted":true,"eta_s":Infinity}',
        lambda: json.dumps({**good_task, "type": "result", "text": "FORGED", "request_id": rng.choice(request_ids),
                            "task_id": f"{rng.getrandbits(64):016x}", "sender": rng.choice(devices)}).encode(),
        lambda: json.dumps({**good_task, "msg_id": "replayed-msg-id"}).encode(),
        lambda: json.dumps({**good_task, "messages": [{"role": "user", "content": "x" * 50}] * 20}).encode(),
        lambda: json.dumps({"device": rng.choice(devices + ["+", "#", "ghost", ""]), "online": rng.random() < 0.5,
                            "alpha_s": rng.choice([0.1, -1, 1e300, None]),
                            "queue_length": rng.choice([0, -3, 10**12])}).encode(),
        # (a request id of its own: a repeat of an id in flight gets no extra reply, by design)
        lambda: json.dumps({"prompt": "x" * rng.randint(1, 10), "request_id": f"fz-{rng.getrandbits(48):x}",
                            "layers": rng.randint(0, 9), "proposers": rng.randint(0, 9)}).encode(),
        lambda: "".join(chr(rng.randint(0x20, 0x2FFFF)) for _ in range(rng.randint(1, 40))).encode(
            "utf-8", "surrogatepass"),
    ]
    return [rng.choice(makers)() for _ in range(n)]


# ---------------------------------------------------------------- scenarios


@dataclass
class ChaosConfig:
    agents: int = 4
    prompts: int = 40
    rate_per_s: float = 20.0
    service_s: float = 0.03
    layers: int = 1
    proposers: int = 2
    seed: int = 1
    fuzz: int = 2000
    drain_s: float = 60.0
    retry_after_s: float = 8.0

    def engine(self) -> dict:
        return {"kind": "synthetic", "synthetic_service_s": self.service_s, "seed": self.seed, "warmup": False}

    def moa(self) -> dict:
        return {"layers": self.layers, "proposers": self.proposers, "ack_timeout_s": 1.0, "task_grace_s": 2.0,
                "request_timeout_s": 120.0}


def _mesh(cfg: ChaosConfig, workdir: Path, broker=None) -> LocalMesh:
    return LocalMesh(cfg.agents, engine=cfg.engine(), moa=cfg.moa(), agent={"heartbeat_s": 0.5},
                     topic_root="chaos/moa", workdir=workdir, broker=broker)


def _load(ledger: PromptLedger, devices: list[str], cfg: ChaosConfig, prefix: str, during=None) -> None:
    """Send cfg.prompts prompts at cfg.rate_per_s to the devices in turn; `during(i)` runs before prompt i."""
    for i in range(cfg.prompts):
        if during is not None:
            during(i)
        ledger.send(devices[i % len(devices)], f"{prefix}-{i}", prompt=f"question {i} of {prefix}")
        time.sleep(1.0 / cfg.rate_per_s)


def tracebacks(mesh: LocalMesh) -> int:
    return sum(mesh.agent_log(d).count("Traceback") for d in mesh.devices)


def scenario_kill(cfg: ChaosConfig, workdir: Path, *, victim: str) -> Outcome:
    """kill -9 of one agent at a random point under load, restarted 2 s later (victim: proposer or origin)."""
    rng = random.Random(cfg.seed)
    with _mesh(cfg, workdir) as mesh, PromptLedger(mesh.settings(), mesh.topic_root) as ledger:
        origin = mesh.devices[0]
        target = origin if victim == "origin" else rng.choice(mesh.devices[1:])
        at = rng.randint(cfg.prompts // 4, 3 * cfg.prompts // 4)
        restart = threading.Timer(2.0, mesh.start_agent, args=(target,))

        def during(i: int) -> None:
            if i == at:
                mesh.kill(target)
                restart.start()

        try:
            _load(ledger, [origin], cfg, f"kill-{victim}", during)
            ledger.wait(cfg.drain_s, retry_after_s=cfg.retry_after_s)
        finally:  # the restarted agent must exist before the mesh stops, or it outlives the mesh
            if restart.is_alive() or restart.finished.is_set():
                restart.join()
        out = ledger.outcome(f"kill -9 {victim} ({target})")
        out.extra = {"tracebacks": tracebacks(mesh), "killed_at_prompt": at}
        return out


def scenario_broker_kill(cfg: ChaosConfig, workdir: Path) -> Outcome:
    """kill -9 of Mosquitto (persistence on) under load, restarted on the same port and database."""
    rng = random.Random(cfg.seed)
    broker = PersistentMosquitto()
    broker.start()
    try:
        with _mesh(cfg, workdir, broker=broker) as mesh, PromptLedger(mesh.settings(), mesh.topic_root) as ledger:
            at = rng.randint(cfg.prompts // 4, 3 * cfg.prompts // 4)

            def during(i: int) -> None:
                if i == at:
                    broker.kill()
                    time.sleep(1.0)
                    broker.restart()

            _load(ledger, mesh.devices, cfg, "broker-kill", during)
            ledger.wait(cfg.drain_s, retry_after_s=cfg.retry_after_s)
            out = ledger.outcome("kill -9 mosquitto, restart")
            out.extra = {"tracebacks": tracebacks(mesh), "killed_at_prompt": at}
            return out
    finally:
        broker.stop()


def scenario_fuzz(cfg: ChaosConfig, workdir: Path) -> tuple[Outcome, Outcome]:
    """cfg.fuzz hostile payloads on every topic the agents subscribe to, interleaved with normal prompts and a
    retried request id. Returns (the normal prompts' outcome, the fuzzed prompts' outcome: each fuzzed prompt
    named a reply route, so each must get exactly one reply)."""
    rng = random.Random(cfg.seed)
    with _mesh(cfg, workdir) as mesh, PromptLedger(mesh.settings(), mesh.topic_root, name="fuzzer") as ledger:
        topics = Topics(mesh.topic_root)
        raw = ledger._transport
        normal, fuzzed = set(), set()
        payloads = fuzz_payloads(rng, cfg.fuzz, devices=mesh.devices, request_ids=[f"n-{i}" for i in range(20)])
        for i, payload in enumerate(payloads):
            device = rng.choice(mesh.devices)
            where = rng.random()
            if where < 0.4:
                rid = f"fz{i}"
                fuzzed.add(rid)
                ledger.send_raw(device, rid, payload)
            elif where < 0.8:
                sender = rng.choice(mesh.devices + ["ghost"])
                raw.publish(topics.inbox(device, sender), payload, qos=1)
            else:
                raw.publish(topics.status(rng.choice(mesh.devices + ["ghost"])), payload, qos=1)
            if i % 50 == 0:
                rid = f"n-{i // 50}"
                normal.add(rid)
                ledger.send(device, rid)
                if i % 200 == 0:
                    ledger.send(device, rid)  # a client retry of the same request id, right away
            if i % 200 == 0:
                time.sleep(0.05)
        ledger.wait(cfg.drain_s)
        alive = [d for d in mesh.devices if mesh._procs[d].poll() is None]
        # after the storm: the mesh still answers, and still uses every peer (no forged status believed)
        final = "after-fuzz"
        ledger.send(mesh.devices[0], final, proposers=min(cfg.proposers, cfg.agents - 1))
        normal.add(final)
        ledger.wait(30)
        good = ledger.outcome("fuzz: normal prompts", only=normal)
        bad = ledger.outcome("fuzz: fuzzed prompts", only=fuzzed)
        trace = json.loads(ledger.replies[final][0]).get("trace", []) if ledger.replies.get(final) else []
        used = sorted({e["device"] for layer in trace for e in layer["answered"]})
        good.extra = {"payloads": len(payloads), "agents_alive": len(alive), "tracebacks": tracebacks(mesh),
                      "peers_used_after": len(used)}
        return good, bad


def scenario_held_poison(cfg: ChaosConfig, workdir: Path) -> Outcome:
    """An agent down while 12 prompts queue for it at the broker, one of them deeply nested JSON, and a
    retained forged status whose device is `+`; the agent starts and must answer every one once."""
    with _mesh(cfg, workdir) as mesh, PromptLedger(mesh.settings(), mesh.topic_root) as ledger:
        origin = mesh.devices[0]
        mesh.stop_agent(origin)
        raw = ledger._transport
        raw.publish(Topics(mesh.topic_root).status("forged"), b'{"device": "+", "online": true}', qos=1,
                    retain=True)
        for i in range(12):
            if i == 5:
                ledger.send_raw(origin, "held-deep", b'{"prompt": ' + b"[" * 20000 + b"]" * 20000 + b"}")
            else:
                ledger.send(origin, f"held-{i}")
        time.sleep(0.5)
        mesh.start_agent(origin)
        ledger.wait(cfg.drain_s)
        out = ledger.outcome("held prompts with poison")
        out.extra = {"tracebacks": tracebacks(mesh)}
        raw.publish(Topics(mesh.topic_root).status("forged"), b"", qos=1, retain=True)
        return out


def summary(outcomes: list[Outcome]) -> dict:
    return {"scenarios": len(outcomes), "prompts": sum(o.prompts for o in outcomes),
            "lost": sum(o.lost for o in outcomes), "duplicated": sum(o.duplicated for o in outcomes),
            "answered": sum(o.answered for o in outcomes), "errored": sum(o.errored for o in outcomes),
            "redundant": sum(o.redundant for o in outcomes),
            "tracebacks": sum(o.extra.get("tracebacks", 0) for o in outcomes)}


__all__ = [
    "ChaosConfig",
    "Outcome",
    "PersistentMosquitto",
    "PromptLedger",
    "fuzz_payloads",
    "scenario_broker_kill",
    "scenario_fuzz",
    "scenario_held_poison",
    "scenario_kill",
    "summary",
]
