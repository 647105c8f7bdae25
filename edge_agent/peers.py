"""Who is alive, from their retained status messages, and how proposers are drawn from them."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterable, Sequence

from .protocol import Status


def choose_peers(alive: Sequence[str], k: int, rng: random.Random, exclude: Iterable[str] = ()) -> list[str]:
    """k distinct peers drawn uniformly at random from `alive` minus `exclude` (fewer when fewer remain)."""
    excluded = set(exclude)
    candidates = sorted(device for device in set(alive) if device not in excluded)
    return rng.sample(candidates, min(k, len(candidates))) if k > 0 else []


@dataclass
class PeerInfo:
    status: Status
    seen_at: float  # local monotonic clock


class PeerTable:
    """The latest status of every other agent; alive = online and heard from within `timeout_s`."""

    def __init__(self, self_id: str, timeout_s: float):
        self.self_id = self_id
        self.timeout_s = timeout_s
        self._peers: dict[str, PeerInfo] = {}

    def update(self, status: Status, now: float) -> bool:
        """Record a status; returns True when this peer just went from alive to gone."""
        if status.device == self.self_id:
            return False
        before = self._peers.get(status.device)
        was_alive = before is not None and self._is_alive(before, now)
        self._peers[status.device] = PeerInfo(status=status, seen_at=now)
        return was_alive and not status.online

    def alive(self, now: float) -> list[str]:
        return sorted(device for device, info in self._peers.items() if self._is_alive(info, now))

    def get(self, device: str) -> PeerInfo | None:
        return self._peers.get(device)

    def all(self) -> dict[str, PeerInfo]:
        return dict(self._peers)

    def _is_alive(self, info: PeerInfo, now: float) -> bool:
        return info.status.online and now - info.seen_at <= self.timeout_s
