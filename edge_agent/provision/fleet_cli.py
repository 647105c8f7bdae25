"""Command line of the emulated fleet (`tools/fleet.py`): up | down | status | cut | heal | delay | loss | exec | ask."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..errors import ConfigError, EdgeMoaError
from . import fleet
from .inventory import load_inventory

DEFAULT_DIR = Path(os.environ.get("EDGE_MOA_FLEET_DIR", "/tmp/edge-moa-fleet"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleet.py", description="An emulated fleet of boards in network "
                                     "namespaces, from an inventory (needs root).")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"fleet folder (default {DEFAULT_DIR}, "
                        "env EDGE_MOA_FLEET_DIR)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("up", help="create namespaces and links, provision, start brokers and agents")
    p.add_argument("--inventory", required=True, type=Path)
    p.add_argument("--engine", choices=["synthetic", "onnx"], default="synthetic",
                   help="synthetic (default) needs no model; onnx uses the inventory's models")
    p.add_argument("--no-agents", action="store_true", help="brokers only")
    sub.add_parser("down", help="stop every process, delete every namespace")
    sub.add_parser("prune", help="delete every emoa-* namespace and its processes, of any fleet (leftovers)")
    p = sub.add_parser("status", help="boards, processes and links")
    p.add_argument("--json", action="store_true")
    for name, help_text in (("cut", "cut the link between two boards"), ("heal", "heal a cut link")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("a")
        p.add_argument("b")
    p = sub.add_parser("delay", help="add delay each way on a tree link (0 = none)")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("ms", type=float)
    p = sub.add_parser("loss", help="drop packets on a link with probability P each way (0 = none)")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("probability", type=float)
    p = sub.add_parser("exec", help="run a command in a board's namespace (or `ops`, the operator's)")
    p.add_argument("board")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- command ...")
    p = sub.add_parser("ask", help="ask an agent, as the operator's user app from the ops namespace")
    p.add_argument("device")
    p.add_argument("prompt")
    p.add_argument("--via", help="the board whose broker to connect to (default: the device's)")
    p.add_argument("--layers", "-M", type=int)
    p.add_argument("--proposers", "-k", type=int)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--json", action="store_true", help="the whole answer with its trace")
    p = sub.add_parser("_ask", help=argparse.SUPPRESS)  # runs inside the ops namespace
    p.add_argument("request", help="JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        for path, value, message in exc.problems:
            print(f"{path} = {value!r}: {message}" if value is not None else f"{path}: {message}", file=sys.stderr)
        return 1
    except EdgeMoaError as exc:
        print(f"fleet.py: {exc}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "_ask":
        return _ask_inside(json.loads(args.request))
    if args.command == "up":
        state = fleet.up(load_inventory(args.inventory), args.dir, engine=args.engine, agents=not args.no_agents)
        print(fleet.describe_status(fleet.status(state)))
        print(f"try: {sys.argv[0]} --dir {args.dir} ask {min(state.boards)} 'What is MQTT?'")
        return 0
    if args.command == "prune":
        print("deleted: " + (", ".join(fleet.prune()) or "nothing"))
        return 0
    if args.command == "down":
        fleet.down(args.dir)
        print(f"fleet in {args.dir} is down")
        return 0
    state = fleet.FleetState.load(args.dir)
    if args.command == "status":
        info = fleet.status(state)
        print(json.dumps(info, indent=1) if args.json else fleet.describe_status(info))
        return 0
    if args.command in ("cut", "heal"):
        getattr(fleet, args.command)(state, args.a, args.b)
    elif args.command == "delay":
        fleet.set_delay(state, args.a, args.b, args.ms)
    elif args.command == "loss":
        fleet.set_loss(state, args.a, args.b, args.probability)
    elif args.command == "exec":
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        return fleet.exec_in(state, args.board, cmd).returncode
    elif args.command == "ask":
        answer = ask(state, args.device, args.prompt, via=args.via, timeout_s=args.timeout, layers=args.layers,
                     proposers=args.proposers)
        if args.json:
            print(json.dumps(answer, indent=2))
        elif "error" in answer:
            print(f"error: {answer['error']}", file=sys.stderr)
        else:
            print(answer["response"])
        return 1 if "error" in answer else 0
    if args.command in ("cut", "heal", "delay", "loss"):
        print(fleet.describe_status(fleet.status(state)))
    return 0


def ask(state: fleet.FleetState, device: str, prompt: str, *, via: str | None = None, timeout_s: float = 120.0,
        **options) -> dict:
    """Ask `device` from the operator's namespace through the broker of `via` (default: the device's board)."""
    board = via or device
    request = {"host": state.address(board), "port": state.ports[board], "root": fleet.topic_root(state),
               "device": device, "prompt": prompt, "timeout_s": timeout_s,
               "options": {k: v for k, v in options.items() if v is not None}, **fleet.ops_credentials(state)}
    proc = fleet.exec_in(state, "ops", [sys.executable, "-m", "edge_agent.provision.fleet_cli", "_ask",
                                        json.dumps(request)], capture_output=True, text=True,
                         timeout=timeout_s + 30)
    if proc.returncode != 0:
        raise fleet.FleetError(f"asking {device} failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout)


def _ask_inside(request: dict) -> int:
    from ..mqtt.client import MoaClient
    from ..mqtt.transport import BrokerSettings

    settings = BrokerSettings(host=request["host"], port=request["port"], username=request["username"],
                              password=request["password"], tls_ca_file=request.get("tls_ca_file"),
                              tls_cert_file=request.get("tls_cert_file"), tls_key_file=request.get("tls_key_file"))
    import time

    with MoaClient(settings, topic_root=request["root"]) as client:
        started = time.monotonic()
        answer = client.ask(request["device"], request["prompt"], timeout_s=request["timeout_s"], **request["options"])
        answer["client_round_trip_s"] = round(time.monotonic() - started, 4)  # prompt out to answer in
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
