"""`edge-moa gateway`: arguments, the API key file, the listening socket and the uvicorn server."""

from __future__ import annotations

import argparse
import logging
import socket
from pathlib import Path

from ..errors import ConfigError
from ..host_port import parse_host_port

log = logging.getLogger(__name__)


def register(sub) -> None:
    from ..mqtt.broker_args import add_broker_args

    gateway = sub.add_parser("gateway", help="an OpenAI-compatible HTTP API and a live mesh page for one board")
    add_broker_args(gateway)
    gateway.add_argument("--device", required=True, help="the agent this gateway asks (its device id)")
    gateway.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT to serve HTTP on "
                         "(default 127.0.0.1:8080; port 0 picks a free one)")
    gateway.add_argument("--api-key-file", type=Path, help="file holding the Bearer key clients must send "
                         "(e.g. a systemd credential); without it the API is open")
    gateway.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for an answer (504 after)")
    gateway.add_argument("--max-connections", type=int, default=64, help="HTTP connections served at once; "
                         "more get 503 (bounds the gateway's memory)")
    gateway.set_defaults(func=cmd_gateway)


def parse_listen(address: str) -> tuple[str, int]:
    try:
        return parse_host_port(address, default_host="0.0.0.0", port_zero=True)
    except ValueError as exc:
        raise ConfigError([("--listen", address, str(exc))]) from None


def read_api_key(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        key = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError([("--api-key-file", str(path), f"cannot read: {exc.strerror}")]) from None
    if len(key) < 8:
        raise ConfigError([("--api-key-file", str(path), "the key must be at least 8 characters")])
    return key


def cmd_gateway(args: argparse.Namespace) -> int:
    import uvicorn

    from ..mqtt.broker_args import broker_from_args
    from ..mqtt.client import MoaClient
    from ..wire.messages import new_id
    from .app import create_app
    from .backend import GatewayBackend

    host, port = parse_listen(args.listen)
    api_key = read_api_key(args.api_key_file)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        raise ConfigError([("--listen", args.listen, f"cannot listen: {exc.strerror}")]) from None
    client = MoaClient(broker_from_args(args), topic_root=args.topic_root,
                       client_id=f"edge-moa-gateway-{args.device}-{new_id()[:8]}")
    client.connect()
    try:
        backend = GatewayBackend(client, args.device, timeout_s=args.timeout)
        app = create_app(backend, api_key=api_key)
        bound_host, bound_port = sock.getsockname()[:2]
        print(f"gateway for {args.device} on http://{bound_host}:{bound_port} (broker {args.broker}, "
              f"API key {'required' if api_key else 'off'})", flush=True)
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", http="h11",
                                limit_concurrency=args.max_connections, timeout_graceful_shutdown=5,
                                log_level=logging.getLogger().level)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        client.close()
    return 0
