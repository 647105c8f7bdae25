"""Who is alive, from their retained status messages, and how proposers are drawn from them."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ..wire.messages import Status

MISSED_BEATS = 3  # a peer is gone after this many of its own advertised status intervals without a status


def status_interval_s(heartbeat_s: float, agents: int, scale_from: int) -> float:
    """Seconds between an agent's statuses in a mesh of `agents` (itself included): heartbeat_s up to
    `scale_from` agents, then in proportion to n, so the mesh carries ~ n x scale_from statuses per heartbeat_s
    instead of n^2 (issue 14 item 5)."""
    return heartbeat_s * max(1.0, agents / scale_from)


def choose_peers(alive: Sequence[str], k: int, rng: random.Random, exclude: Iterable[str] = (),
                 cost: Callable[[str], float] | None = None, candidates: int = 0) -> list[str]:
    """k distinct peers from `alive` minus `exclude` (fewer when fewer remain).

    Uniform at random, as in the paper, when `cost` is None. Otherwise "power of d choices": draw
    max(candidates, k) uniformly, keep the k of lowest cost (e.g. expected wait = (queue + 1) x alpha), which
    steers work away from slow or loaded boards (DESIGN section 4).
    """
    excluded = set(exclude)
    pool = sorted(device for device in set(alive) if device not in excluded)
    if k <= 0 or not pool:
        return []
    if cost is None:
        return rng.sample(pool, min(k, len(pool)))
    drawn = rng.sample(pool, min(max(candidates, k), len(pool)))
    return sorted(drawn, key=cost)[:k]


@dataclass
class PeerInfo:
    status: Status
    seen_at: float  # local monotonic clock
    queue_length: int = 0  # latest of its status, its acks, plus the tasks we sent since


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
        self._peers[status.device] = PeerInfo(status=status, seen_at=now, queue_length=status.queue_length or 0)
        return was_alive and not status.online

    def note_queue(self, device: str, queue_length: int) -> None:
        """A fresher queue length than the last status (from a task acknowledgement)."""
        if device in self._peers:
            self._peers[device].queue_length = queue_length

    def note_sent(self, device: str) -> None:
        if device in self._peers:
            self._peers[device].queue_length += 1

    def expected_wait_s(self, device: str, default_alpha_s: float = 1.0) -> float:
        """(tasks ahead + 1) x its mean inference time: when a task sent now would be done."""
        info = self._peers.get(device)
        if info is None:
            return float("inf")
        return (info.queue_length + 1) * (info.status.alpha_s or default_alpha_s)

    def alive(self, now: float) -> list[str]:
        return sorted(device for device, info in self._peers.items() if self._is_alive(info, now))

    def timeout_for(self, info: PeerInfo) -> float:
        """timeout_s, or MISSED_BEATS of the peer's own advertised interval when that is longer (a large mesh
        slows its heartbeats), capped at 10 x timeout_s so no status can claim to be alive for ever."""
        beats = MISSED_BEATS * (info.status.heartbeat_s or 0.0)
        return min(max(self.timeout_s, beats), 10 * self.timeout_s)

    def _is_alive(self, info: PeerInfo, now: float) -> bool:
        """Online, heard from lately, and not saying its engine hangs."""
        return (info.status.online and info.status.healthy is not False
                and now - info.seen_at <= self.timeout_for(info))
