"""The `edge-moa` command line: argument parsing and logging set-up only; the work lives in the modules."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from . import __version__
from .errors import ConfigError, EdgeMoaError
from .mqtt.broker_args import add_broker_args, broker_from_args

log = logging.getLogger("edge_agent")
EX_CONFIG = 78  # sysexits.h: the agent's unit has RestartPreventExitStatus=78
EPILOG = ("exit status: 0 success; 1 the command failed (the message says why and what to do); 2 usage error; "
          "130 interrupted; `edge-moa agent` exits 78 when it refuses its configuration or model (systemd does not "
          "restart it)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except EdgeMoaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 1)  # IncompatibleModelError: 78, which systemd does not restart
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-moa", description="Distributed Mixture-of-Agents on edge boards.",
                                     epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"edge-moa {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for payloads)")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    agent = sub.add_parser("agent", help="run this board's agent daemon")
    agent.add_argument("--config", required=True, type=Path, help="agent.toml")
    agent.add_argument("--decommission", action="store_true",
                       help="remove this agent from the mesh's view (its retained status and Home Assistant "
                            "device) and exit")
    agent.set_defaults(func=cmd_agent)

    config = sub.add_parser("config", help="configuration tools")
    config.set_defaults(func=lambda args: config.print_help() or 2)  # `edge-moa config` alone: say what it takes
    config_sub = config.add_subparsers(metavar="ACTION")
    check = config_sub.add_parser("check", help="validate an agent.toml: key path, value and message; exit 1")
    check.add_argument("file", type=Path)
    check.set_defaults(func=cmd_config_check)

    ask = sub.add_parser("ask", help="ask an agent a question and print its answer")
    add_broker_args(ask)
    ask.add_argument("--device", required=True, help="the agent to ask (its device id)")
    ask.add_argument("--layers", "-M", type=int, help="MoA layers (default: the agent's)")
    ask.add_argument("--proposers", "-k", type=int, help="extra proposers per layer (default: the agent's)")
    ask.add_argument("--max-new-tokens", type=int)
    ask.add_argument("--temperature", type=float)
    ask.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the answer")
    ask.add_argument("--json", action="store_true", help="print the whole answer with its trace")
    ask.add_argument("prompt")
    ask.set_defaults(func=cmd_ask)

    status = sub.add_parser("status", help="a live table of the mesh's agents")
    add_broker_args(status)
    status.add_argument("--once", action="store_true", help="print once and exit")
    status.add_argument("--json", action="store_true", help="print JSON (with --once: one object)")
    status.add_argument("--wait", type=float, default=1.5, help="seconds to collect retained statuses")
    status.set_defaults(func=cmd_status)

    from .gateway import commands as gateway
    from .local import demo

    demo.register(sub)
    gateway.register(sub)
    _register_features(sub)
    return parser


def _register_features(sub) -> None:
    """The commands of the model, stability and provisioning parts (each module's `register(subparsers)`)."""
    import importlib

    for name in ("edge_agent.model.commands", "edge_agent.stability.commands", "edge_agent.provision.commands",
                 "edge_agent.eval.commands"):
        try:
            importlib.import_module(name).register(sub)
        except Exception as exc:  # noqa: BLE001  # a broken optional command must not stop the agent daemon
            print(f"warning: commands of {name} unavailable: {exc}", file=sys.stderr)


def setup_logging(verbosity: int) -> None:
    level = logging.WARNING - 10 * min(verbosity, 2) if verbosity else logging.INFO
    under_systemd = bool(os.environ.get("INVOCATION_ID") or os.environ.get("JOURNAL_STREAM"))
    fmt = "%(levelname)s %(name)s: %(message)s" if under_systemd else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr)


# ---------------------------------------------------------------- commands


def cmd_agent(args: argparse.Namespace) -> int:
    from .config import load_config
    from .node import decommission, run_agent

    try:
        config = load_config(args.config)
        if args.decommission:
            for topic in decommission(config):
                print(f"removed retained {topic}")
            return 0
        run_agent(config)
    except ConfigError as exc:  # a refused configuration or model: tell systemd not to restart (errors.py)
        print(f"error: {exc}", file=sys.stderr)
        return EX_CONFIG
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    from .config import check_resources, load_config

    try:
        config = load_config(args.file)
        problems = check_resources(config)
        if problems:
            raise ConfigError(problems)
    except ConfigError as exc:
        for path, value, message in exc.problems:
            print(f"{args.file}: {path} = {value!r}: {message}", file=sys.stderr)
        return 1
    print(f"{args.file}: OK (device {config.agent.device_id}, engine {config.engine.kind} {config.engine.model}, "
          f"broker {config.mqtt.host}:{config.mqtt.port})")
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    from .mqtt.client import MoaClient

    with MoaClient(broker_from_args(args), topic_root=args.topic_root) as client:
        answer = client.ask(args.device, args.prompt, timeout_s=args.timeout, layers=args.layers,
                            proposers=args.proposers, max_new_tokens=args.max_new_tokens,
                            temperature=args.temperature)
    if args.json:
        print(json.dumps(answer, indent=2))
    elif "error" in answer:
        print(f"error from {answer.get('device')}: {answer['error']['code']}: {answer['error']['message']}",
              file=sys.stderr)
    else:
        print(answer["response"])
    return 1 if "error" in answer else 0


def cmd_status(args: argparse.Namespace) -> int:
    from .mqtt.client import MoaClient
    from .status_view import render_table

    with MoaClient(broker_from_args(args), topic_root=args.topic_root) as client:
        client.watch_status()
        time.sleep(args.wait)
        while True:
            statuses = client.statuses()
            if args.json:
                print(json.dumps({d: s.model_dump(exclude_none=True) for d, s in sorted(statuses.items())}))
            else:
                if not args.once:
                    print("\033[2J\033[H", end="")
                print(render_table(statuses, now=time.time()))
            if args.once:
                return 0 if statuses else 1
            time.sleep(1.0)


if __name__ == "__main__":
    sys.exit(main())
