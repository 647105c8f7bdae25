"""The one way we stop what we started (edge_agent/child_process.py), on real child processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from edge_agent.child_process import alive, stop_child, stop_children, stop_group

STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
POLITE = "import time; print('ready', flush=True); time.sleep(60)"


def _child(code: str, **kwargs) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, **kwargs)
    assert proc.stdout.readline() == "ready\n"  # its SIGTERM handler is in place
    return proc


def test_a_child_that_obeys_sigterm_is_not_killed():
    proc = _child(POLITE)
    stop_child(proc)
    assert proc.returncode == -signal.SIGTERM


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_period():
    proc = _child(STUBBORN)
    started = time.monotonic()
    stop_child(proc, grace_s=0.5)
    assert proc.returncode == -signal.SIGKILL
    assert 0.5 <= time.monotonic() - started < 5.0


def test_children_get_sigterm_side_by_side_and_an_exited_one_is_left_alone():
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait(10)
    stubborn = [_child(STUBBORN) for _ in range(2)]
    started = time.monotonic()
    stop_children([done, *stubborn], grace_s=1.0)
    assert done.returncode == 0
    assert [p.returncode for p in stubborn] == [-signal.SIGKILL] * 2
    assert time.monotonic() - started < 1.0 + 1.0 + 2.0  # the second waited during the first's grace period


def test_a_group_goes_with_its_grandchildren():
    # The leader starts a stubborn grandchild in its own group, as `ip netns exec` does, and prints its pid.
    leader_code = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', {STUBBORN!r}], "
                   "stdout=subprocess.PIPE, text=True); p.stdout.readline(); print(p.pid, flush=True); time.sleep(60)")
    leader = subprocess.Popen([sys.executable, "-c", leader_code], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    grandchild = int(leader.stdout.readline())
    assert alive(grandchild)
    stop_group(leader.pid, grace_s=0.5)
    assert not alive(grandchild) and not alive(leader.pid)
    stop_group(leader.pid)  # gone already: nothing to do
