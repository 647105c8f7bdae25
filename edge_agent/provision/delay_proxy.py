"""A userspace TCP proxy that delays every byte by a fixed time each way: link delay without `tc netem`.

    python -m edge_agent.provision.delay_proxy --listen 127.0.0.1:9000 --to 10.200.0.2:8883 --delay-ms 50

Order is kept and nothing is coalesced away: each chunk read is written `delay` later, so a round trip through
the proxy costs 2 x delay more. TLS passes through untouched (the proxy never looks at the bytes).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket

from ..host_port import parse_host_port

log = logging.getLogger(__name__)
CHUNK = 65536


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    sender = asyncio.create_task(send())
    try:
        while data := await reader.read(CHUNK):
            queue.put_nowait((loop.time() + delay_s, data))
    except ConnectionError:
        pass
    finally:
        queue.put_nowait((loop.time() + delay_s, b""))
        try:
            await sender
        except ConnectionError:
            pass


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def serve(listen: tuple[str, int], target: tuple[str, int], delay_s: float) -> None:
    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*target)
        except OSError as exc:
            log.warning("cannot reach %s:%d: %s", *target, exc)
            client_writer.close()
            return
        _nodelay(client_writer)
        _nodelay(server_writer)
        try:
            await asyncio.gather(_pump(client_reader, server_writer, delay_s),
                                 _pump(server_reader, client_writer, delay_s))
        finally:
            for writer in (client_writer, server_writer):
                writer.close()

    server = await asyncio.start_server(handle, *listen, reuse_address=True)
    log.info("delaying %s:%d -> %s:%d by %.0f ms each way", *listen, *target, delay_s * 1000)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, type=parse_host_port, help="HOST:PORT to accept on")
    parser.add_argument("--to", required=True, type=parse_host_port, help="HOST:PORT to forward to")
    parser.add_argument("--delay-ms", required=True, type=float, help="added delay each way, in ms")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s delay_proxy: %(message)s")
    asyncio.run(serve(args.listen, args.to, args.delay_ms / 1000))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
