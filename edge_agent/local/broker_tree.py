"""A tree of local Mosquitto brokers joined by bridges (two connections per link, as docs/mesh.md), for scale runs.

Broker i's parent is broker (i - 1) // fanout, so 8 brokers with fanout 2 are a tree of depth 3. Plain listeners
on loopback, no auth: this is the provisioned mesh's bridge layout (broker/board.conf.j2) without TLS and ACLs.
`$SYS` is published every `sys_interval_s` so message rates can be read per broker (`BrokerRates`).
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field

from ..mqtt.broker_process import MosquittoProcess, free_port, render_local_conf

BRIDGE = """
connection {name}
address 127.0.0.1:{parent_port}
bridge_protocol_version {protocol}
{topics}
try_private true
remote_clientid {clientid}
local_clientid {clientid}.local
cleansession false
restart_timeout 1 5
keepalive_interval 15
notifications false
start_type automatic
"""


def bridge_conf(child: int, parent_port: int, topic_root: str) -> str:
    """The two bridge connections of one tree link: MQTT v5 for prompts, statuses and inboxes, 3.1.1 for answers."""
    v5 = BRIDGE.format(name=f"edge-moa-b{child}-to-parent", parent_port=parent_port, protocol="mqttv50",
                       clientid=f"bridge.b{child}",
                       topics="\n".join(f"topic {topic_root}/{t} both 1" for t in ("+/prompt", "+/status",
                                                                                   "+/inbox/+")))
    v311 = BRIDGE.format(name=f"edge-moa-b{child}-to-parent-answers", parent_port=parent_port, protocol="mqttv311",
                         clientid=f"bridge.b{child}.answers", topics=f"topic {topic_root}/+/answer/# both 1")
    return v5 + v311


class BrokerTree:
    """`with BrokerTree(8, topic_root="moa/v1") as tree: tree.brokers[0]` (the root); parents start first."""

    def __init__(self, n: int, *, topic_root: str = "moa/v1", fanout: int = 2, sys_interval_s: int = 5):
        if n < 1 or fanout < 1:
            raise ValueError(f"a tree needs n >= 1 brokers and fanout >= 1, not n={n}, fanout={fanout}")
        self.topic_root = topic_root
        self.fanout = fanout
        self.ports = [free_port() for _ in range(n)]
        self.parent = {i: (i - 1) // fanout for i in range(1, n)}
        self.brokers: list[MosquittoProcess] = []
        for i, port in enumerate(self.ports):
            conf = render_local_conf(port) + f"sys_interval {sys_interval_s}\n"
            if i in self.parent:
                conf += bridge_conf(i, self.ports[self.parent[i]], topic_root)
            self.brokers.append(MosquittoProcess(port=port, conf_text=conf))

    @property
    def links(self) -> int:
        return len(self.parent)

    def depth(self, i: int) -> int:
        d = 0
        while i in self.parent:
            i, d = self.parent[i], d + 1
        return d

    def hops(self, a: int, b: int) -> int:
        """Bridges a message crosses from broker a to broker b."""
        up_a = [a]
        while up_a[-1] in self.parent:
            up_a.append(self.parent[up_a[-1]])
        up_b = [b]
        while up_b[-1] in self.parent:
            up_b.append(self.parent[up_b[-1]])
        common = next(x for x in up_a if x in up_b)
        return up_a.index(common) + up_b.index(common)

    def start(self) -> BrokerTree:
        try:
            for broker in self.brokers:  # index order: every parent before its children
                broker.start()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_bridged(self, timeout_s: float = 30.0) -> None:
        """Until a retained probe published on every broker is seen on every other: every bridge is up."""
        from ..mqtt.transport import BrokerSettings, PahoTransport

        probe_root = f"{self.topic_root}/probe-{uuid.uuid4().hex[:6]}"
        seen: dict[int, set[str]] = {i: set() for i in range(len(self.brokers))}
        lock = threading.Lock()
        clients = []
        try:
            for i, broker in enumerate(self.brokers):
                def on_message(m, i=i):
                    with lock:
                        seen[i].add(m.topic)
                t = PahoTransport(BrokerSettings(host=broker.host, port=broker.port),
                                  client_id=f"edge-moa-probe-{i}-{uuid.uuid4().hex[:6]}", on_message=on_message)
                t.subscribe(f"{self.topic_root}/+/status", 1)
                t.connect()
                clients.append(t)
            topics = [f"{self.topic_root}/{probe_root.rsplit('/', 1)[-1]}-b{i}/status" for i in range(len(clients))]
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                for t, topic in zip(clients, topics):
                    t.publish(topic, b'{"probe": true}', qos=1, retain=False)
                time.sleep(0.5)
                with lock:
                    if all(set(topics) <= s for s in seen.values()):
                        return
            raise TimeoutError(f"bridges not all up after {timeout_s}s: {self.logs()[-2000:]}")
        finally:
            for t in clients:
                t.close()

    def stop(self) -> None:
        for broker in reversed(self.brokers):
            if broker._proc is not None:
                broker.stop()

    def logs(self) -> str:
        return "\n".join(f"--- broker {i}\n{b.log()[-1500:]}" for i, b in enumerate(self.brokers))

    def __enter__(self) -> BrokerTree:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class BrokerRates:
    """Messages per second each broker received and sent, from its `$SYS/broker/messages/{received,sent}` counters,
    between `start()` and `stop()` (counters published every sys_interval_s)."""

    tree: BrokerTree
    counters: dict[int, dict[str, list[tuple[float, int]]]] = field(default_factory=dict)

    def start(self) -> BrokerRates:
        from ..mqtt.transport import BrokerSettings, PahoTransport

        self._lock = threading.Lock()
        self._clients = []
        for i, broker in enumerate(self.tree.brokers):
            self.counters[i] = {"received": [], "sent": []}

            def on_message(m, i=i):
                kind = m.topic.rsplit("/", 1)[-1]
                try:
                    value = int(m.payload)
                except ValueError:
                    return
                with self._lock:
                    self.counters[i][kind].append((time.monotonic(), value))
            t = PahoTransport(BrokerSettings(host=broker.host, port=broker.port),
                              client_id=f"edge-moa-sys-{i}-{uuid.uuid4().hex[:6]}", on_message=on_message)
            for kind in ("received", "sent"):
                t.subscribe(f"$SYS/broker/messages/{kind}", 0)
            t.connect()
            self._clients.append(t)
        return self

    def stop(self) -> None:
        for t in self._clients:
            t.close()

    def rates(self, since: float | None = None, until: float | None = None) -> dict[int, dict[str, float]]:
        """Per broker, messages per second received and sent over the samples inside [since, until]."""
        out: dict[int, dict[str, float]] = {}
        with self._lock:
            for i, kinds in self.counters.items():
                out[i] = {}
                for kind, samples in kinds.items():
                    inside = [(t, v) for t, v in samples if (since is None or t >= since)
                              and (until is None or t <= until)]
                    if len(inside) >= 2 and inside[-1][0] > inside[0][0]:
                        out[i][kind] = (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])
        return out
