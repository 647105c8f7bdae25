"""The delay proxy on loopback: bytes arrive intact, in order, each way later by the set delay."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

from edge_agent.child_process import stop_child
from edge_agent.mqtt.broker_process import free_port, wait_for_port


def _echo_server() -> tuple[socket.socket, int]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def test_proxy_delays_each_way_and_keeps_bytes():
    server, echo_port = _echo_server()
    port = free_port()
    proxy = subprocess.Popen([sys.executable, "-m", "edge_agent.provision.delay_proxy", "--listen",
                              f"127.0.0.1:{port}", "--to", f"127.0.0.1:{echo_port}", "--delay-ms", "100"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", port, 10)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            payload = bytes(range(256)) * 1000
            started = time.monotonic()
            conn.sendall(payload)
            received = b""
            while len(received) < len(payload):
                received += conn.recv(65536)
            elapsed = time.monotonic() - started
        assert received == payload
        assert 0.2 <= elapsed < 1.0, elapsed  # 100 ms out, 100 ms back
    finally:
        stop_child(proxy)
        server.close()
