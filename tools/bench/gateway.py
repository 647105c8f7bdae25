#!/usr/bin/env python3
"""What the gateway adds: p50/p95 of POST /v1/chat/completions minus the same prompt asked over MQTT as
`edge-moa ask` does (MoaClient.ask), paired and alternated on one local mesh; time to first token; gateway RSS.

    .venv/bin/python tools/bench/gateway.py [--prompts 40] [--service-s 0.3] [--real-prompts 8]

The synthetic engine (deterministic service time) isolates the overhead; the default model gives time to first
token as a user sees it. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from edge_agent.child_process import stop_child
from edge_agent.config import DEFAULT_MODEL
from edge_agent.local.mesh import LocalMesh
from edge_agent.mqtt.broker_process import free_port


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Gateway:
    def __init__(self, mesh: LocalMesh, device: str, workdir: Path):
        self.port = free_port()
        self.log = open(workdir / "gateway-bench.log", "ab")  # noqa: SIM115  # the child's output, kept open
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "gateway", "--broker", mesh.broker.address, "--topic-root",
             mesh.topic_root, "--device", device, "--listen", f"127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.request({"model": "single", "messages": [{"role": "user", "content": "warm"}],
                              "max_tokens": 2})
                return
            except OSError:
                time.sleep(0.2)
        raise SystemExit("gateway did not start")

    def request(self, body: dict) -> tuple[float, float, dict | str]:
        """(seconds to the first content byte, seconds to the end, answer) over a fresh connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        started = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        first = None
        if body.get("stream"):
            text = []
            for raw in response:
                line = raw.decode().strip()
                if line.startswith("data: ") and line != "data: [DONE]":
                    delta = (json.loads(line[6:]).get("choices") or [{}])[0].get("delta", {}).get("content")
                    if delta and first is None:
                        first = time.perf_counter() - started
                    if delta:
                        text.append(delta)
            result: dict | str = "".join(text)
        else:
            result = json.loads(response.read())
        total = time.perf_counter() - started
        conn.close()
        if response.status != 200:
            raise SystemExit(f"gateway answered {response.status}: {result}")
        return (first if first is not None else total), total, result

    def stop(self) -> None:
        stop_child(self.proc)
        self.log.close()


def overhead(mesh: LocalMesh, gateway: Gateway, prompts: int, layers: int, proposers: int, tokens: int) -> dict:
    via_mqtt, via_http, diffs = [], [], []
    model = "single" if layers == 0 else f"moa-M{layers}-k{proposers}"
    with mesh.client() as client:
        for i in range(prompts):
            prompt = f"Question {i}: name a colour of the sea."
            pair = {}
            for way in (("mqtt", "http") if i % 2 == 0 else ("http", "mqtt")):
                started = time.perf_counter()
                if way == "mqtt":
                    answer = client.ask("agent1", prompt, layers=layers, proposers=proposers,
                                        max_new_tokens=tokens, timeout_s=600)
                    assert "error" not in answer, answer
                    pair[way] = time.perf_counter() - started
                else:
                    pair[way] = gateway.request({"model": model, "max_tokens": tokens,
                                                 "messages": [{"role": "user", "content": prompt}]})[1]
            via_mqtt.append(pair["mqtt"])
            via_http.append(pair["http"])
            diffs.append(pair["http"] - pair["mqtt"])
    ms = lambda v: round(1000 * v, 2)
    return {"model": model, "prompts": prompts, "mqtt_p50_ms": ms(statistics.median(via_mqtt)),
            "http_p50_ms": ms(statistics.median(via_http)), "overhead_p50_ms": ms(statistics.median(diffs)),
            "overhead_p95_ms": ms(percentile(diffs, 0.95)),
            "http_minus_mqtt_p50_ms": ms(statistics.median(via_http) - statistics.median(via_mqtt)),
            "http_minus_mqtt_p95_ms": ms(percentile(via_http, 0.95) - percentile(via_mqtt, 0.95))}


def concurrent_rss(gateway: Gateway, clients: int) -> dict:
    """RSS of the gateway while `clients` streamed requests wait on the mesh at once."""
    from concurrent.futures import ThreadPoolExecutor

    peak = rss_mb(gateway.proc.pid)
    body = {"model": "single", "stream": True, "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]}
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(gateway.request, body) for _ in range(clients)]
        while not all(f.done() for f in futures):
            peak = max(peak, rss_mb(gateway.proc.pid))
            time.sleep(0.05)
        for f in futures:
            f.result()
    return {"clients": clients, "rss_peak_mb": round(peak, 1), "all_answered_s": round(time.perf_counter() - started, 2)}


def first_token(gateway: Gateway, prompts: int, layers: int, proposers: int, tokens: int) -> dict:
    model = "single" if layers == 0 else f"moa-M{layers}-k{proposers}"
    ttft, whole, plain = [], [], []
    for i in range(prompts):
        body = {"model": model, "max_tokens": tokens, "messages": [{"role": "user", "content":
                                                                    f"Give tip {i} for saving energy at home."}]}
        first, total, _ = gateway.request({**body, "stream": True})
        ttft.append(first)
        whole.append(total)
        plain.append(gateway.request(body)[1])
    return {"model": model, "prompts": prompts, "stream_first_token_p50_s": round(statistics.median(ttft), 3),
            "stream_whole_p50_s": round(statistics.median(whole), 3),
            "no_stream_whole_p50_s": round(statistics.median(plain), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--service-s", type=float, default=0.3, help="synthetic engine's service time")
    parser.add_argument("--real-prompts", type=int, default=8, help="0 skips the default-model run")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--concurrent", type=int, default=50, help="streams waiting at once for the RSS peak")
    args = parser.parse_args()
    report: dict = {}
    root = f"bench/{uuid.uuid4().hex[:8]}"
    with LocalMesh(3, engine={"kind": "synthetic", "synthetic_service_s": args.service_s}, topic_root=root,
                   ) as mesh:
        gateway = Gateway(mesh, "agent1", mesh.workdir)
        try:
            report["gateway_rss_idle_mb"] = round(rss_mb(gateway.proc.pid), 1)
            report["synthetic"] = [overhead(mesh, gateway, args.prompts, m, k, 32) for m, k in ((0, 0), (1, 2))]
            report["gateway_rss_after_mb"] = round(rss_mb(gateway.proc.pid), 1)
            report["concurrent"] = concurrent_rss(gateway, args.concurrent)
            report["gateway_rss_after_concurrent_mb"] = round(rss_mb(gateway.proc.pid), 1)
        finally:
            gateway.stop()
    if args.real_prompts:
        with LocalMesh(3, engine={"model": DEFAULT_MODEL, "threads": 1}, topic_root=root + "r",
                       moa={"max_new_tokens": args.max_new_tokens}) as mesh:
            gateway = Gateway(mesh, "agent1", mesh.workdir)
            try:
                report["default_model_overhead"] = overhead(mesh, gateway, args.real_prompts, 1, 2,
                                                            args.max_new_tokens)
                report["default_model_first_token"] = [first_token(gateway, args.real_prompts, m, k,
                                                                   args.max_new_tokens) for m, k in ((1, 2), (0, 0))]
                report["gateway_rss_default_model_mb"] = round(rss_mb(gateway.proc.pid), 1)
            finally:
                gateway.stop()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
