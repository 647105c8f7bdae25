"""`edge-moa demo`: a local broker, several agents with the default real model, sample prompts answered."""

from __future__ import annotations

import argparse
import logging
import signal
import time
from pathlib import Path

from ..child_process import stop_child
from ..config import DEFAULT_MODEL

SAMPLE_PROMPTS = [
    "What is the capital of France? Answer in one sentence.",
    "Give two tips for saving energy at home.",
    "Explain in two sentences why the sky is blue.",
]


def register(sub) -> None:
    demo = sub.add_parser("demo", help="start a local mesh with the default model and ask it a few questions")
    demo.add_argument("--agents", type=int, default=4, help="number of agents (default 4)")
    demo.add_argument("--model", default=DEFAULT_MODEL, help="catalogue name or built model directory")
    demo.add_argument("--models", help="a mixed mesh: comma-separated model per agent, e.g. "
                      "smollm2-135m-instruct,qwen2.5-coder-0.5b-instruct (overrides --model and --agents)")
    demo.add_argument("--aggregation", choices=("synthesize", "select"), default=None,
                      help="how the origin turns the last layer's answers into one (default: the mesh's, synthesize)")
    demo.add_argument("--layers", "-M", type=int, default=1)
    demo.add_argument("--proposers", "-k", type=int, default=2)
    demo.add_argument("--max-new-tokens", type=int, default=64)
    demo.add_argument("--threads", type=int, default=1, help="inference threads per agent")
    demo.add_argument("--serve", action="store_true", help="keep the mesh up after the samples (Ctrl-C ends it)")
    demo.add_argument("--port", type=int, help="broker port (default: a free one)")
    demo.add_argument("--workdir", type=Path, help="where agent configs, logs and journals go")
    demo.add_argument("--gateway", metavar="HOST:PORT", help="with --serve: also run `edge-moa gateway` for agent1 "
                      "there (OpenAI-compatible API and the live mesh page), e.g. 127.0.0.1:8080")
    demo.add_argument("prompts", nargs="*", help="prompts to ask (default: a few samples)")
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from ..artifact.store import resolve_model_dir
    from ..mqtt.broker_process import local_broker
    from .mesh import LocalMesh

    names = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else [args.model] * args.agents
    from ..model.catalogue import catalogue_names

    dirs = [resolve_model_dir(name, known_names=catalogue_names) for name in names]
    # SIGTERM (a supervisor, `timeout`, a test harness) must tear the mesh down like Ctrl-C: no orphans.
    signal.signal(signal.SIGTERM, _interrupt)
    logging.getLogger("edge_agent").setLevel(logging.WARNING)
    broker = local_broker(port=args.port)
    print(f"broker:  {broker.name} on {broker.address}")
    if len(set(dirs)) == 1:
        print(f"model:   {dirs[0]}")
    else:
        print("models:  " + ", ".join(f"agent{i} {d.name}" for i, d in enumerate(dirs, 1)))
    print(f"agents:  {len(dirs)} processes, {args.threads} inference thread(s) each; loading...", flush=True)
    started = time.monotonic()
    per_agent = {f"agent{i}": {"model": str(d)} for i, d in enumerate(dirs, 1)}
    moa = {"max_new_tokens": args.max_new_tokens, **({"aggregation": args.aggregation} if args.aggregation else {})}
    with broker, LocalMesh(len(dirs), engine={"threads": args.threads}, engine_per_agent=per_agent, moa=moa,
                           broker=broker, workdir=args.workdir, log_level="-v", metrics=args.serve) as mesh:
        print(f"ready in {time.monotonic() - started:.1f}s: {', '.join(mesh.devices)} (logs in {mesh.workdir})\n")
        with mesh.client() as client:
            for i, prompt in enumerate(args.prompts or SAMPLE_PROMPTS):
                device = mesh.devices[i % len(mesh.devices)]
                print(f"── {device} asked (M={args.layers}, k={args.proposers}): {prompt}", flush=True)
                answer = client.ask(device, prompt, layers=args.layers, proposers=args.proposers,
                                    max_new_tokens=args.max_new_tokens, timeout_s=600)
                print(describe_answer(answer), flush=True)
        if args.serve:
            gateway = _start_gateway(args.gateway, broker.address, mesh) if args.gateway else None
            if gateway is not None:
                print(f"gateway: http://{args.gateway}/ (mesh page), http://{args.gateway}/v1 (OpenAI API, "
                      f"model moa, single or moa-M<m>-k<k>)")
            print(f"\nmesh is up: broker {broker.address}, topic root {mesh.topic_root}. Try:\n"
                  f"  edge-moa ask --broker {broker.address} --device agent1 'Hello!'\n"
                  f"  mosquitto_rr -h {broker.host} -p {broker.port} -V 5 -t moa/v1/agent1/prompt "
                  f"-e moa/v1/agent1/answer/x -m 'Hello!'\n"
                  f"  edge-moa status --broker {broker.address}", flush=True)
            for device in mesh.devices:
                print(f"  metrics of {device}: {mesh.metrics_url(device)}", flush=True)
            print("Ctrl-C stops it.", flush=True)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
            finally:
                if gateway is not None:
                    stop_child(gateway)
    return 0


def _start_gateway(listen: str, broker_address: str, mesh):
    import subprocess
    import sys

    log = open(mesh.workdir / "gateway.log", "ab")  # noqa: SIM115  # the child's output
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent", "gateway", "--broker", broker_address,
                             "--topic-root", mesh.topic_root, "--device", mesh.devices[0], "--listen", listen],
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not _answers(f"http://{listen}/health"):
        if proc.poll() is not None:
            raise SystemExit(f"the gateway exited ({proc.returncode}); see {mesh.workdir / 'gateway.log'}")
        time.sleep(0.2)
    return proc


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def describe_answer(answer: dict) -> str:
    if "error" in answer:
        return f"   error {answer['error']['code']}: {answer['error']['message']}\n"
    lines = [f"   answer ({answer['latency_s']:.1f}s end to end, {answer['inferences']} inferences):",
             "   " + answer["response"].strip().replace("\n", "\n   ")]
    for layer in answer["trace"]:
        who = ", ".join(f"{e['device']} {e['inference_s']:.1f}s" for e in layer["answered"])
        dropped = "".join(f"; {e['device']} {e['outcome']}" for e in layer.get("dropped", []))
        lines.append(f"   layer {layer['layer']} {layer['kind']}: {who}{dropped}")
    return "\n".join(lines) + "\n"
