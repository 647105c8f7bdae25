"""Command-line options for reaching a broker, shared by every command that is an MQTT client (ask, status,
gateway, experiment): the same TLS and credential flags everywhere."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import ConfigError
from ..host_port import parse_host_port


def add_broker_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", default=os.environ.get("EDGE_MOA_BROKER", "127.0.0.1:1883"),
                        help="HOST:PORT of a broker in the mesh (env EDGE_MOA_BROKER)")
    parser.add_argument("--topic-root", default="moa/v1")
    parser.add_argument("--mqtt-protocol", choices=["v5", "v311"], default="v5")
    parser.add_argument("--username")
    parser.add_argument("--password-file", type=Path)
    parser.add_argument("--tls-ca-file", help="CA certificate (turns TLS on)")
    parser.add_argument("--tls-cert-file", help="client certificate, for mutual TLS")
    parser.add_argument("--tls-key-file", help="client key, for mutual TLS")


def broker_from_args(args: argparse.Namespace):
    from .transport import BrokerSettings

    try:
        host, port = parse_host_port(args.broker, default_port=1883)
    except ValueError as exc:
        raise ConfigError([("--broker", args.broker, f"{exc}; HOST alone means port 1883")]) from None
    password = None
    if args.password_file:
        try:
            password = args.password_file.read_text().strip()
        except OSError as exc:
            raise ConfigError([("--password-file", str(args.password_file), f"cannot read: {exc.strerror}")]) from None
    if args.tls_cert_file and not args.tls_ca_file:
        raise ConfigError([("--tls-cert-file", args.tls_cert_file, "needs --tls-ca-file (without it: plaintext)")])
    return BrokerSettings(host=host, port=port, protocol=args.mqtt_protocol, username=args.username,
                          password=password, tls_ca_file=args.tls_ca_file, tls_cert_file=args.tls_cert_file,
                          tls_key_file=args.tls_key_file)
