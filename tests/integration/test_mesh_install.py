"""install.sh on a throw-away copy of this machine (root): overlays on /etc and /var/lib in a private mount and
network namespace, so nothing on the host changes; systemctl and the venv's pip are stand-ins."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from edge_agent.provision import parse_inventory, provision

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root: mount and net namespaces")]
REPO = Path(__file__).resolve().parents[2]


def _stand_ins(tmp: Path) -> tuple[Path, Path]:
    """A PATH folder with a recording `systemctl`, and a venv whose pip records and whose edge-moa is ours."""
    calls = tmp / "calls.log"
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(f'#!/bin/sh\necho "systemctl $*" >> {calls}\n')
    venv_bin = tmp / "opt" / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").symlink_to(sys.executable)
    (venv_bin / "pip").write_text(f'#!/bin/sh\necho "pip $*" >> {calls}\n')
    (venv_bin / "edge-moa").write_text(f'#!/bin/sh\ncd {REPO} && exec {sys.executable} -m edge_agent "$@"\n')
    for exe in (bin_dir / "systemctl", venv_bin / "pip", venv_bin / "edge-moa"):
        exe.chmod(0o755)
    return bin_dir, calls


def test_install_sh_puts_every_file_in_place_and_the_broker_starts_from_it(tmp_path):
    if not shutil.which("unshare"):
        pytest.fail("unshare (util-linux) is needed")
    data = tomllib.loads((REPO / "examples" / "inventory.toml").read_text())
    data["mesh"]["install_dir"] = str(tmp_path / "opt")
    provision(parse_inventory(data), tmp_path / "out")
    bundle = tmp_path / "out" / "boards" / "pi-b"
    (bundle / "edge_moa-0.1.0-py3-none-any.whl").write_text("stand-in wheel")
    bin_dir, calls = _stand_ins(tmp_path)
    for name in ("etc-up", "etc-work", "var-up", "var-work"):
        (tmp_path / name).mkdir()
    script = f"""
set -e
mount -t overlay overlay -o lowerdir=/etc,upperdir={tmp_path}/etc-up,workdir={tmp_path}/etc-work /etc
mount -t overlay overlay -o lowerdir=/var/lib,upperdir={tmp_path}/var-up,workdir={tmp_path}/var-work /var/lib
ip link set lo up
PATH={bin_dir}:$PATH sh {bundle}/install.sh
id edge-moa
stat -c '%a %U %G %n' /etc/edge-moa/agent.toml /etc/edge-moa/credentials /etc/edge-moa/credentials/mqtt-password \
    /etc/edge-moa/credentials/tls-key /etc/edge-moa/tls/ca.crt /etc/edge-moa/mosquitto/mosquitto.conf \
    /etc/edge-moa/mosquitto/passwd /etc/edge-moa/mosquitto/acl /etc/edge-moa/mosquitto/board.key \
    /etc/systemd/system/edge-moa-agent.service /etc/systemd/system/mosquitto.service.d/edge-moa.conf /var/lib/mosquitto
# the broker as systemd would start it: as root, dropping to user mosquitto, reading the installed files
mosquitto -c /etc/edge-moa/mosquitto/mosquitto.conf > {tmp_path}/mosquitto.log 2>&1 &
pid=$!
for i in $(seq 50); do ss -Hltn 'sport = :8883' | grep -q 8883 && break; sleep 0.1; done
ss -Hltn 'sport = :8883' | grep -q 8883 && echo BROKER-LISTENING
ps -o user= -p $pid
kill $pid; wait $pid || true
"""
    proc = subprocess.run(["unshare", "--mount", "--net", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=120, check=False)
    log = (tmp_path / "mosquitto.log").read_text() if (tmp_path / "mosquitto.log").exists() else ""
    assert proc.returncode == 0, proc.stdout + proc.stderr + log
    modes = {line.split()[-1]: line.split()[:3] for line in proc.stdout.splitlines() if line.startswith(("6", "7"))}
    assert modes["/etc/edge-moa/credentials"] == ["700", "root", "root"]
    assert modes["/etc/edge-moa/credentials/mqtt-password"] == ["600", "root", "root"]
    assert modes["/etc/edge-moa/credentials/tls-key"] == ["600", "root", "root"]
    assert modes["/etc/edge-moa/mosquitto/mosquitto.conf"] == ["640", "root", "mosquitto"]
    assert modes["/etc/edge-moa/mosquitto/board.key"] == ["640", "root", "mosquitto"]
    assert modes["/etc/edge-moa/agent.toml"] == ["644", "root", "root"]
    assert modes["/var/lib/mosquitto"][1:] == ["mosquitto", "mosquitto"]
    assert "BROKER-LISTENING" in proc.stdout, proc.stdout + log
    assert "mosquitto" in proc.stdout.splitlines(), proc.stdout  # it dropped to user mosquitto and still read all
    assert "uid=" in proc.stdout and "OK (device pi-b" in proc.stdout
    recorded = calls.read_text()
    assert "pip install --upgrade" in recorded and "edge_moa-0.1.0-py3-none-any.whl" in recorded
    assert "systemctl enable mosquitto.service edge-moa-agent.service" in recorded
    assert "systemctl restart edge-moa-agent.service" in recorded
    # nothing leaked onto the host
    assert not Path("/etc/edge-moa").exists()
    assert subprocess.run(["id", "edge-moa"], capture_output=True, check=False).returncode != 0
