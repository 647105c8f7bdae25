"""A large synthetic mesh across a bridge tree of brokers, every prompt counted (issue 14 item 5).

n agents (synthetic engine) spread over a BrokerTree, Poisson prompts from one user app on the root broker, and:
what became of every prompt (answered once, errored, lost, duplicated; for each unanswered one what the origin
agent's journal says: still in flight = late, finished and sent = lost after the agent, neither = never accepted),
latency, the per-hop overhead of the bridges (QoS 1 probes between brokers at each distance), every broker's message
rate (`$SYS`) and CPU per agent, idle (status traffic only) and under load. `tools/bench/scale.py` is the command.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import statistics
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..local.broker_tree import BrokerRates, BrokerTree
from ..local.chaos import PromptLedger
from ..local.mesh import LocalMesh
from ..mqtt.transport import BrokerSettings, PahoTransport
from .experiment import poisson_schedule
from .planner import plan

log = logging.getLogger(__name__)
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ScaleConfig:
    agents: int = 64
    brokers: int = 8
    fanout: int = 2
    layers: int = 1
    proposers: int = 2
    alpha_s: float = 1.0  # the synthetic engine's service time
    load: float = 0.7  # fraction of Theorem 1's bound
    duration_s: float = 300.0  # of prompts
    drain_s: float = 120.0  # after the last prompt, waiting for answers
    late_s: float = 60.0  # then, listening for late answers to what was still unanswered
    idle_s: float = 20.0  # status traffic alone, before the prompts
    heartbeat_s: float = 1.0
    heartbeat_scale_from: int | None = None  # agent.heartbeat_scale_from; None: the agent's default
    seed: int = 0
    probes: int = 20  # QoS 1 round trips per hop distance
    workdir: str | None = None
    ghost_prompts: int = 0  # a control of the count: prompts to a device no agent serves, which must count as lost

    @property
    def rate(self) -> float:
        return self.load * plan(agents=self.agents, layers=self.layers, proposers=self.proposers, rate=1.0,
                                alphas=(self.alpha_s,)).max_rate


def _cpu_s(pid: int) -> float:
    """utime + stime of a process, seconds (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


class _Cpu:
    def __init__(self, pids: dict[str, int]):
        self.pids = pids
        self.start()

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._c0 = {k: _cpu_s(p) for k, p in self.pids.items()}

    def shares(self) -> dict[str, float]:
        """Fraction of one core each process used since start()."""
        span = time.monotonic() - self._t0
        return {k: (_cpu_s(p) - self._c0[k]) / span for k, p in self.pids.items()}


def hop_latency(tree: BrokerTree, probes: int = 20) -> dict[int, float]:
    """Median QoS 1 publish-to-delivery seconds from the root to one broker at each hop distance."""
    by_hops: dict[int, int] = {}
    for i in range(len(tree.brokers)):
        by_hops.setdefault(tree.hops(0, i), i)
    got: dict[str, float] = {}
    lock = threading.Lock()
    out: dict[int, float] = {}
    for hops, i in sorted(by_hops.items()):
        def on_message(m):
            with lock:
                got[m.topic.rsplit("/", 2)[-2]] = time.monotonic()
        sub = PahoTransport(BrokerSettings(host=tree.brokers[i].host, port=tree.brokers[i].port),
                            client_id=f"edge-moa-hop-sub-{uuid.uuid4().hex[:6]}", on_message=on_message)
        sub.subscribe(f"{tree.topic_root}/+/status", 1)
        sub.connect()
        pub = PahoTransport(BrokerSettings(host=tree.brokers[0].host, port=tree.brokers[0].port),
                            client_id=f"edge-moa-hop-pub-{uuid.uuid4().hex[:6]}", on_message=lambda m: None)
        pub.connect()
        time.sleep(0.5)
        seconds = []
        for n in range(probes):
            key = f"probe{hops}x{n}{uuid.uuid4().hex[:4]}"
            sent = time.monotonic()
            pub.publish(f"{tree.topic_root}/{key}/status", b"{}", qos=1, retain=False)
            deadline = sent + 5.0
            while time.monotonic() < deadline:
                with lock:
                    if key in got:
                        seconds.append(got.pop(key) - sent)
                        break
                time.sleep(0.0005)
        pub.close()
        sub.close()
        if seconds:
            out[hops] = statistics.median(seconds)
    return out


def journal_state(workdir: Path, device: str, request_id: str) -> str:
    """What the origin agent's journal says of a request: in_flight, finished_sent, finished_unsent or absent."""
    path = workdir / device / "state" / f"{device}.journal.sqlite"
    if not path.exists():
        return "no_journal"
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        if con.execute("SELECT 1 FROM prompts WHERE request_id = ?", (request_id,)).fetchone():
            return "in_flight"
        row = con.execute("SELECT sent FROM replies WHERE request_id = ?", (request_id,)).fetchone()
    finally:
        con.close()
    if row is None:
        return "absent"
    return "finished_sent" if row[0] else "finished_unsent"


def _rates_summary(rates: dict[int, dict[str, float]]) -> dict:
    received = [r.get("received", float("nan")) for r in rates.values()]
    sent = [r.get("sent", float("nan")) for r in rates.values()]
    def stat(f, xs):
        xs = [x for x in xs if not math.isnan(x)]
        return round(float(f(xs)), 1) if xs else None
    return {"per_broker": {str(i): {k: round(v, 1) for k, v in r.items()} for i, r in rates.items()},
            "received_per_s_mean": stat(np.mean, received), "sent_per_s_mean": stat(np.mean, sent),
            "sent_per_s_max": stat(np.max, sent), "sent_per_s_total": stat(np.sum, sent)}


def _cpu_summary(shares: dict[str, float]) -> dict:
    agents = [v for k, v in shares.items() if not k.startswith("broker")]
    brokers = [v for k, v in shares.items() if k.startswith("broker")]
    return {"agent_mean": round(statistics.mean(agents), 4), "agent_max": round(max(agents), 4),
            "agents_total": round(sum(agents), 3), "brokers_total": round(sum(brokers), 3),
            "broker_max": round(max(brokers), 4)}


def run_scale(cfg: ScaleConfig, progress=print) -> dict:
    """The whole run; returns the report (also written to workdir/scale.json)."""
    workdir = Path(cfg.workdir) if cfg.workdir else Path(f"/tmp/edge-moa-scale-{uuid.uuid4().hex[:6]}")
    workdir.mkdir(parents=True, exist_ok=True)
    root = f"scale/{uuid.uuid4().hex[:6]}/moa"
    horizon = 10 * cfg.duration_s + 600
    agent = {"heartbeat_s": cfg.heartbeat_s, "peer_timeout_s": max(30.0, 3 * cfg.heartbeat_s)}
    if cfg.heartbeat_scale_from is not None:
        agent["heartbeat_scale_from"] = cfg.heartbeat_scale_from
    report: dict = {"config": {**asdict(cfg), "rate": cfg.rate}, "workdir": str(workdir)}
    started = time.monotonic()
    with BrokerTree(cfg.brokers, topic_root=root, fanout=cfg.fanout) as tree:
        tree.wait_bridged()
        report["tree"] = {"brokers": cfg.brokers, "links": tree.links, "bridge_connections": 2 * tree.links,
                          "depth": max(tree.depth(i) for i in range(cfg.brokers))}
        report["hop_latency_s"] = {str(h): round(s, 5) for h, s in hop_latency(tree, cfg.probes).items()}
        progress(f"tree of {cfg.brokers} brokers up; per-hop latency (idle) {report['hop_latency_s']}")
        mesh = LocalMesh(cfg.agents, engine={"kind": "synthetic", "synthetic_service_s": cfg.alpha_s,
                                             "warmup": False, "max_batch": 1, "seed": cfg.seed},
                         moa={"layers": cfg.layers, "proposers": cfg.proposers, "task_grace_s": horizon,
                              "request_timeout_s": horizon, "max_new_tokens": 16},
                         queue={"max_tasks": 1_000_000}, agent=agent, topic_root=root, workdir=workdir,
                         brokers=tree.brokers, log_level="-v")
        with mesh:
            report["mesh_start_s"] = round(time.monotonic() - started, 1)
            progress(f"{cfg.agents} agents online after {report['mesh_start_s']}s")
            pids = {**mesh.pids(), **{f"broker{i}": b._proc.pid for i, b in enumerate(tree.brokers)}}
            rates = BrokerRates(tree).start()
            try:
                time.sleep(2.0)
                cpu = _Cpu(pids)
                t_idle = time.monotonic()
                time.sleep(cfg.idle_s)
                report["idle"] = {"seconds": cfg.idle_s, "cpu": _cpu_summary(cpu.shares()),
                                  "brokers": _rates_summary(rates.rates(t_idle, time.monotonic()))}
                progress(f"idle: {json.dumps(report['idle']['cpu'])}, broker msgs/s "
                         f"sent {report['idle']['brokers']['sent_per_s_mean']}")
                if cfg.duration_s > 0:
                    report.update(_load(cfg, mesh, rates, pids, workdir, progress))
            finally:
                rates.stop()
            report["agent_tracebacks"] = sum(mesh.agent_log(d).count("Traceback") for d in mesh.devices)
    report["wall_s"] = round(time.monotonic() - started, 1)
    (workdir / "scale.json").write_text(json.dumps(report, indent=1))
    return report


def _load(cfg: ScaleConfig, mesh: LocalMesh, rates: BrokerRates, pids: dict[str, int], workdir: Path,
          progress) -> dict:
    schedule = poisson_schedule(mesh.devices, cfg.rate, cfg.duration_s, cfg.seed) if cfg.duration_s > 0 else []
    out: dict = {"prompts_scheduled": len(schedule)}
    with PromptLedger(mesh.settings(), mesh.topic_root, name="scale") as ledger:
        time.sleep(1.0)
        cpu = _Cpu(pids)
        start = time.monotonic()
        origin: dict[str, str] = {}
        for i, (t, device) in enumerate(schedule):
            delay = start + t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            rid = f"s{cfg.seed}-{i}"
            origin[rid] = device
            ledger.send(device, rid, prompt=f"question {i}", layers=cfg.layers, proposers=cfg.proposers)
        for i in range(cfg.ghost_prompts):
            rid = f"ghost-{cfg.seed}-{i}"
            origin[rid] = "ghost"
            ledger.send("ghost", rid, prompt="nobody serves this", layers=cfg.layers, proposers=cfg.proposers)
        end = time.monotonic()
        out["send_lag_s"] = round(end - start - cfg.duration_s, 2)
        out["load"] = {"cpu": _cpu_summary(cpu.shares()), "brokers": _rates_summary(rates.rates(start, end))}
        progress(f"prompts sent; load: {json.dumps(out['load']['cpu'])}, broker msgs/s sent "
                 f"{out['load']['brokers']['sent_per_s_mean']} (max {out['load']['brokers']['sent_per_s_max']})")
        ledger.wait(cfg.drain_s)
        drained = time.monotonic()
        unanswered = ledger.unanswered()
        states = {rid: journal_state(workdir, origin[rid], rid) for rid in unanswered}
        if unanswered and cfg.late_s > 0:
            ledger.wait(cfg.late_s)
        outcome = ledger.outcome("scale")
        still = set(ledger.unanswered())
        with ledger._lock:
            latency = [ledger.first_reply_at[rid] - ledger.sent_at[rid] for rid in ledger.first_reply_at
                       if rid in origin]
            answered_by_drain = sum(1 for rid in origin if rid in ledger.first_reply_at
                                    and ledger.first_reply_at[rid] <= drained)
        lat = np.array(latency)
        out.update({
            "prompts": outcome.prompts, "answered": outcome.answered, "errored": outcome.errored,
            "errors": outcome.errors, "lost": outcome.lost, "duplicated": outcome.duplicated,
            "redundant": outcome.redundant, "answered_by_end_of_drain": answered_by_drain,
            "unanswered_at_end_of_drain": len(unanswered),
            "unanswered_journal": {s: sum(1 for v in states.values() if v == s) for s in set(states.values())},
            "late": len(set(unanswered) - still), "never_answered": len(still),
            "latency_s": {"mean": round(float(lat.mean()), 3), "p50": round(float(np.percentile(lat, 50)), 3),
                          "p95": round(float(np.percentile(lat, 95)), 3),
                          "max": round(float(lat.max()), 3)} if lat.size else None,
        })
    return out


def simulated(cfg: ScaleConfig, prompts: int = 200_000) -> dict:
    """The simulator's long-run figures for the same configuration (deterministic synthetic service)."""
    from .simulator import SimConfig, simulate

    run = simulate(SimConfig(agents=cfg.agents, layers=cfg.layers, proposers=cfg.proposers, rate=cfg.rate,
                             alphas=(cfg.alpha_s,), prompts=prompts, seed=cfg.seed + 1))
    s = run.summary()
    return {"mean_in_system": s["mean_in_system"], "latency": s["latency"], "utilization": s["utilization"]}
