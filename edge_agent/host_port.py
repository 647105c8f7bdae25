"""`HOST:PORT` as a broker address, a listen address or a proxy's ends: one parser, one set of rules."""

from __future__ import annotations


def parse_host_port(text: str, *, default_port: int | None = None, default_host: str | None = None,
                    port_zero: bool = False) -> tuple[str, int]:
    """`HOST:PORT` (or `[IPv6]:PORT`) into (host, port); a ValueError that says what is wrong otherwise.

    With `default_port`, `HOST` alone is accepted; with `default_host`, `:PORT` is; with `port_zero`, port 0
    (a listener's "any free port")."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or rest[:1] not in ("", ":"):
            raise ValueError(f"{text!r} is not [IPv6]:PORT")
        port = rest[1:] if rest else None
    elif ":" in text:
        host, _, port = text.rpartition(":")
    else:
        host, port = text, None
    if port is None:
        if default_port is None:
            raise ValueError(f"{text!r} is not HOST:PORT (no port)")
        number = default_port
    elif port.isascii() and port.isdigit() and (0 if port_zero else 1) <= int(port) <= 65535:
        number = int(port)
    else:
        raise ValueError(f"{text!r} is not HOST:PORT (port {port!r} not in {0 if port_zero else 1}-65535)")
    if not host:
        if default_host is None:
            raise ValueError(f"{text!r} is not HOST:PORT (no host)")
        host = default_host
    return host, number
