"""The only place that builds or parses topic strings (DESIGN section 2 and docs/protocol.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..config import DEVICE_ID_PATTERN
from ..errors import ProtocolError

_DEVICE = re.compile(DEVICE_ID_PATTERN)


@dataclass(frozen=True)
class Topics:
    """Topic names under one root, e.g. `moa/v1`."""

    root: str = "moa/v1"

    # -- public contract --
    def prompt(self, device: str) -> str:
        return f"{self.root}/{device}/prompt"

    def answer(self, device: str, request_id: str) -> str:
        return f"{self.root}/{device}/answer/{request_id}"

    def status(self, device: str) -> str:
        return f"{self.root}/{device}/status"

    def all_status(self) -> str:
        return f"{self.root}/+/status"

    # -- internal: agent-to-agent. The sender's id is the last level so a broker ACL can pin it to the user name.
    def inbox(self, device: str, sender: str) -> str:
        for name in (device, sender):
            if not _DEVICE.match(name):  # never let a wire value become a wildcard or an extra level
                raise ProtocolError(f"device id {name[:80]!r} is not a valid device id")
        return f"{self.root}/{device}/inbox/{sender}"

    def my_inbox(self, device: str) -> str:
        return f"{self.root}/{device}/inbox/+"

    # -- parsing --
    def parse(self, topic: str) -> tuple[str, str, str | None] | None:
        """Split a topic under our root into (device, kind, extra), or None if it is not one of ours."""
        prefix = self.root + "/"
        if not topic.startswith(prefix):
            return None
        parts = topic[len(prefix):].split("/")
        if not parts or not _DEVICE.match(parts[0]):
            return None
        if len(parts) == 2 and parts[1] in ("prompt", "status"):
            return parts[0], parts[1], None
        if len(parts) == 3 and parts[1] in ("inbox", "answer"):
            return parts[0], parts[1], parts[2]
        return None

