"""The operator's description of a fleet (TOML): mesh settings, boards, links between them, user apps."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..config import DEFAULT_MODEL, DEVICE_ID_PATTERN, read_toml, validate_toml_model

HOST_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9.:-]{0,252})$"  # an IPv4 address or a DNS name (IPv6 refused below)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MeshSettings(_Model):
    name: str = Field("edge-moa", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Mesh name, in the CA's name.")
    topic_root: str = Field("moa/v1", pattern=r"^[^#+/\s]+(/[^#+/\s]+)*$", description="Prefix of topics.")
    layers: int = Field(1, ge=0, description="Default M of every agent.")
    proposers: int = Field(2, ge=0, description="Default k of every agent.")
    tls: bool = Field(True, description="TLS on every listener and bridge.")
    mutual_tls: bool = Field(True, description="With tls: every client (agents, bridges, apps) shows a cert.")
    port: int | None = Field(None, ge=1, le=65535, description="Broker port (default 8883 with TLS, else 1883).")
    bind: str = Field("", description="Listen address of every broker ('' = all interfaces).")
    engine: Literal["onnx", "synthetic"] = Field("onnx", description="Inference engine of every agent.")
    model: str = Field(DEFAULT_MODEL, description="Default model (catalogue name or path on the board).")
    memory_max_mb: int = Field(1536, ge=64, description="systemd MemoryMax of the agent; the queue cap obeys it.")
    broker_queue_messages: int = Field(10000, ge=100, description="Mosquitto max_queued_messages per client.")
    broker_queue_mb: int = Field(32, ge=1, description="Mosquitto max_queued_bytes per client, in MiB.")
    broker_memory_mb: int = Field(256, ge=16, description="Mosquitto memory_limit: refuse messages beyond it.")
    bridge_keepalive_s: int = Field(15, ge=5, description="Bridge keepalive: how soon a dead link is noticed.")
    bridge_protocol: Literal["mqttv50", "mqttv311"] = Field(
        "mqttv50", description="mqttv50: MQTT v5 properties (Response Topic) cross bridges, but the parent drops "
        "the bridge's session during an outage; mqttv311: the parent queues for the child, properties are lost.")
    install_dir: Path = Field(Path("/opt/edge-moa"), description="Where install.sh puts the venv on a board.")
    package: str = Field("edge-moa", description="pip requirement install.sh installs (unless a wheel is bundled).")
    cert_days: int = Field(825, ge=1, description="Validity of issued board and user certificates.")
    metrics: bool = Field(False, description="Every agent serves Prometheus metrics ([metrics] in agent.toml).")
    metrics_bind: str = Field("127.0.0.1", min_length=1, description="Listen address of the agents' /metrics.")
    metrics_port: int = Field(9464, ge=1, le=65535, description="Port of the agents' /metrics.")
    home_assistant: bool = Field(False, description="Every agent publishes a Home Assistant discovery config.")
    home_assistant_prefix: str = Field("homeassistant", pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$",
                                       description="Home Assistant's discovery prefix.")
    home_assistant_user: str | None = Field(None, description="The [[users]] entry Home Assistant logs in as: "
                                            "it may read and write under the prefix and read every status.")
    gateway: bool = Field(False, description="Every board runs `edge-moa gateway` (edge-moa-gateway.service).")
    gateway_listen: str = Field("127.0.0.1:8080", pattern=r"^[^\s:]*:\d{1,5}$",
                                description="HOST:PORT the gateways listen on.")

    @property
    def listen_port(self) -> int:
        return self.port or (8883 if self.tls else 1883)


class Board(_Model):
    id: str = Field(pattern=DEVICE_ID_PATTERN, description="Device id; also its broker user name.")
    address: str = Field(pattern=HOST_PATTERN, description="Address other boards' bridges connect to.")
    port: int | None = Field(None, ge=1, le=65535, description="Broker port, if not the mesh's.")
    bind: str | None = Field(None, description="Listen address, if not the mesh's.")
    model: str | None = Field(None, description="Model, if not the mesh's.")
    memory_max_mb: int | None = Field(None, ge=64, description="Agent MemoryMax, if not the mesh's.")
    threads: int = Field(0, ge=0, description="Inference threads (0 = all cores).")
    role: Literal["board", "hub"] = Field("board", description="hub: root of the bridge tree (at most one).")
    neighbours: tuple[str, ...] = Field((), description="Boards linked to this one (cost 1).")
    metrics: bool | None = Field(None, description="Prometheus metrics, if not the mesh's choice.")
    home_assistant: bool | None = Field(None, description="Home Assistant discovery, if not the mesh's choice.")
    gateway: bool | None = Field(None, description="The OpenAI-compatible gateway, if not the mesh's choice.")
    gateway_listen: str | None = Field(None, pattern=r"^[^\s:]*:\d{1,5}$",
                                       description="The gateway's HOST:PORT, if not the mesh's.")

    @model_validator(mode="after")
    def _not_ipv6(self) -> Board:
        # A bridge's `address` is host:port with no brackets in Mosquitto 2.0: an IPv6 literal is ambiguous.
        if ":" in self.address:
            raise ValueError(f"board {self.id!r}: give an IPv4 address or a DNS name, not {self.address!r}")
        return self


class Link(_Model):
    between: tuple[str, str] = Field(description="The two board ids.")
    cost: float = Field(1.0, gt=0, description="Lower is better (latency, hops, money).")
    preferred: bool = Field(False, description="Operator's choice: enters the tree before any other link.")


class User(_Model):
    name: str = Field(pattern=DEVICE_ID_PATTERN, description="Broker user name of a user app.")
    devices: tuple[str, ...] = Field(("*",), description="Devices it may prompt and read answers of ('*' = all).")


class Inventory(_Model):
    mesh: MeshSettings = MeshSettings()
    boards: tuple[Board, ...] = Field(min_length=1)
    links: tuple[Link, ...] = ()
    users: tuple[User, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> Inventory:
        ids = [board.id for board in self.boards]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"duplicate board ids: {', '.join(duplicates)}")
        known = set(ids)
        for user in self.users:
            if user.name in known:
                raise ValueError(f"user {user.name!r} has the id of a board; broker user names must be unique")
            unknown = [d for d in user.devices if d != "*" and d not in known]
            if unknown:
                raise ValueError(f"user {user.name!r} names unknown devices: {', '.join(unknown)}")
        names = [user.name for user in self.users]
        if len(set(names)) != len(names):
            raise ValueError("duplicate user names")
        for board in self.boards:
            for other in board.neighbours:
                if other not in known:
                    raise ValueError(f"board {board.id!r} lists unknown neighbour {other!r}")
                if other == board.id:
                    raise ValueError(f"board {board.id!r} lists itself as a neighbour")
        for link in self.links:
            a, b = link.between
            for end in (a, b):
                if end not in known:
                    raise ValueError(f"link {a} - {b} names unknown board {end!r}")
            if a == b:
                raise ValueError(f"link {a} - {b} joins a board to itself")
        ha_user = self.mesh.home_assistant_user
        if ha_user is not None and ha_user not in names:
            raise ValueError(f"mesh.home_assistant_user {ha_user!r} is not one of the [[users]]")
        hubs = [board.id for board in self.boards if board.role == "hub"]
        if len(hubs) > 1:
            raise ValueError(f"at most one hub, found {', '.join(hubs)}")
        endpoints = [(self.port_of(b), b.address) for b in self.boards]
        clashes = sorted({f"{addr}:{port}" for port, addr in endpoints if endpoints.count((port, addr)) > 1})
        if clashes:
            raise ValueError(f"boards share an address and port: {', '.join(clashes)}")
        return self

    def board(self, board_id: str) -> Board:
        return next(b for b in self.boards if b.id == board_id)

    def port_of(self, board: Board) -> int:
        return board.port or self.mesh.listen_port

    def bind_of(self, board: Board) -> str:
        return self.mesh.bind if board.bind is None else board.bind

    def model_of(self, board: Board) -> str:
        return board.model or self.mesh.model

    def memory_max_mb_of(self, board: Board) -> int:
        return board.memory_max_mb or self.mesh.memory_max_mb

    def metrics_of(self, board: Board) -> bool:
        return self.mesh.metrics if board.metrics is None else board.metrics

    def home_assistant_of(self, board: Board) -> bool:
        return self.mesh.home_assistant if board.home_assistant is None else board.home_assistant

    def gateway_of(self, board: Board) -> bool:
        return self.mesh.gateway if board.gateway is None else board.gateway

    def gateway_listen_of(self, board: Board) -> str:
        return board.gateway_listen or self.mesh.gateway_listen

    def all_links(self) -> tuple[Link, ...]:
        """[[links]] plus the boards' `neighbours`, one Link per pair; an explicit [[links]] entry wins."""
        merged: dict[frozenset[str], Link] = {}
        for board in self.boards:
            for other in board.neighbours:
                key = frozenset((board.id, other))
                merged.setdefault(key, Link(between=tuple(sorted(key))))
        for link in self.links:
            merged[frozenset(link.between)] = link
        return tuple(merged[key] for key in sorted(merged, key=sorted))


def is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_inventory(data: dict) -> Inventory:
    return validate_toml_model(Inventory, data)


def load_inventory(path: str | Path) -> Inventory:
    return parse_inventory(read_toml(path))
