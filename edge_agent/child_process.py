"""Stopping what we started, one way everywhere: SIGTERM, a grace period, then SIGKILL (and a short wait for it)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

GRACE_S = 10.0  # SIGTERM -> SIGKILL: an agent leaves cleanly (offline status, journal closed) well within it
KILL_WAIT_S = 5.0


def stop_child(proc: subprocess.Popen, grace_s: float = GRACE_S) -> None:
    """Terminate then kill one child; nothing happens when it has already exited."""
    stop_children([proc], grace_s)


def stop_children(procs: Iterable[subprocess.Popen], grace_s: float = GRACE_S) -> None:
    """SIGTERM to every running one first (they shut down side by side), then wait for each, SIGKILL if late."""
    running = [proc for proc in procs if proc.poll() is None]
    for proc in running:
        proc.terminate()
    for proc in running:
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            log.warning("pid %d still running %.0fs after SIGTERM: SIGKILL", proc.pid, grace_s)
            proc.kill()
            proc.wait(KILL_WAIT_S)


def stop_group(pgid: int, grace_s: float = GRACE_S) -> None:
    """The same for a process group we started (start_new_session), so that e.g. `ip netns exec`'s child goes too;
    by pid, for processes another run of ours started (the fleet's state file)."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, KILL_WAIT_S)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            _reap(pgid)
            if not alive(pgid) and not _group_alive(pgid):
                return
            time.sleep(0.05)


def alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _group_alive(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False
