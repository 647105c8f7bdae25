"""`edge-moa provision` on disk: bundle contents and modes, re-runs, certificates, --check, systemd units."""

from __future__ import annotations

import argparse
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import tomllib

from edge_agent.config import load_config
from edge_agent.errors import ConfigError
from edge_agent.provision import parse_inventory, provision
from edge_agent.provision.commands import register
from edge_agent.provision.pki import certificate_names

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "inventory.toml"


def example(**changes) -> dict:
    data = tomllib.loads(EXAMPLE.read_text())
    data["mesh"].update(changes)
    return data


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="edge-moa")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["provision", *argv])
    return args.func(args)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_bundle_holds_everything_a_board_needs(tmp_path):
    provision(parse_inventory(example()), tmp_path)
    bundle = tmp_path / "boards" / "pi-b"
    expected = {
        "agent.toml": 0o644, "credentials/mqtt-password": 0o600, "tls/ca.crt": 0o644, "tls/board.crt": 0o644,
        "tls/board.key": 0o600, "mosquitto/mosquitto.conf": 0o600, "mosquitto/passwd": 0o600,
        "mosquitto/acl": 0o644, "systemd/edge-moa-agent.service": 0o644, "systemd/edge-moa-gateway.service": 0o644,
        "systemd/mosquitto.service.d/edge-moa.conf": 0o644, "install.sh": 0o755,
    }
    found = {str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()}
    assert found == set(expected)
    for name, wanted in expected.items():
        assert mode(bundle / name) == wanted, name
    assert not (bundle / "tls" / "ca.key").exists() and not list(bundle.rglob("ca.key"))
    assert mode(tmp_path / "secrets" / "passwords") == 0o600 and mode(tmp_path / "ca" / "ca.key") == 0o600
    config = load_config(bundle / "agent.toml")  # the contract: the provisioned agent.toml validates
    assert config.agent.device_id == "pi-b" and config.mqtt.username == "pi-b"
    password = (bundle / "credentials" / "mqtt-password").read_text().strip()
    assert f"remote_password {password}" not in (bundle / "mosquitto" / "mosquitto.conf").read_text()
    passwd_users = [line.split(":")[0] for line in (bundle / "mosquitto" / "passwd").read_text().splitlines()]
    assert passwd_users == ["pi-b", "bridge.jetson-d", "dashboard"]
    assert (tmp_path / "users" / "dashboard" / "dashboard.crt").exists()
    subprocess.run(["sh", "-n", str(bundle / "install.sh")], check=True)


def test_certificates_name_the_board_and_chain_to_the_ca(tmp_path):
    provision(parse_inventory(example()), tmp_path)
    bundle = tmp_path / "boards" / "pi-c"
    names = certificate_names(bundle / "tls" / "board.crt")
    assert {"DNS:pi-c", "IP:192.168.50.13", "DNS:localhost", "IP:127.0.0.1"} <= set(names)
    subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "ca" / "ca.crt"), str(bundle / "tls" / "board.crt")],
                   check=True, capture_output=True)


def test_rerun_changes_nothing(tmp_path):
    inventory = parse_inventory(example())
    first = provision(inventory, tmp_path)
    snapshot = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    second = provision(inventory, tmp_path)
    assert second.changed() == [] and len(first.changed()) > 40
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == snapshot


def test_adding_a_board_changes_only_what_must_change(tmp_path):
    data = example()
    provision(parse_inventory(data), tmp_path)
    data["boards"].append({"id": "pi-e", "address": "192.168.50.15", "neighbours": ["pi-c"]})
    report = provision(parse_inventory(data), tmp_path)
    changed = {str(p.relative_to(tmp_path)) for p in report.changed()}
    new_bundle = {c for c in changed if c.startswith("boards/pi-e/")}
    assert len(new_bundle) == 12
    data["boards"] = [b for b in data["boards"] if b["id"] != "pi-e"]
    assert provision(parse_inventory(data), tmp_path).stale == [tmp_path / "boards" / "pi-e"]
    assert changed - new_bundle == {
        "mesh/passwd", "mesh/acl", "mesh/tree.txt", "secrets/passwords",
        "boards/pi-a/mosquitto/acl", "boards/pi-b/mosquitto/acl", "boards/pi-c/mosquitto/acl",
        "boards/jetson-d/mosquitto/acl",
        "boards/pi-c/mosquitto/passwd",  # pi-e's bridge logs in on pi-c
    }


def test_a_certificate_that_no_longer_fits_is_not_replaced_silently(tmp_path):
    data = example()
    provision(parse_inventory(data), tmp_path)
    cert = tmp_path / "boards" / "pi-a" / "tls" / "board.crt"
    before = cert.read_bytes()
    data["boards"][0]["address"] = "192.168.60.11"
    with pytest.raises(ConfigError) as caught:
        provision(parse_inventory(data), tmp_path)
    assert "lacks the names IP:192.168.60.11" in caught.value.problems[0][2]
    assert cert.read_bytes() == before
    cert.unlink()
    (tmp_path / "boards" / "pi-a" / "tls" / "board.key").unlink()
    report = provision(parse_inventory(data), tmp_path)
    assert report.actions[cert] == "issued" and "IP:192.168.60.11" in certificate_names(cert)


def test_tls_off_needs_no_ca(tmp_path):
    provision(parse_inventory(example(tls=False)), tmp_path)
    assert not (tmp_path / "ca").exists() and not (tmp_path / "boards" / "pi-a" / "tls").exists()
    assert "\nlistener 1883\n" in (tmp_path / "boards" / "pi-a" / "mosquitto" / "mosquitto.conf").read_text()


def test_cli_check_prints_the_tree_and_writes_nothing(tmp_path, capsys):
    assert run_cli("--inventory", str(EXAMPLE), "--check") == 0
    out = capsys.readouterr().out
    assert "bridge tree (root pi-a" in out and "pi-c - jetson-d  (cost 3)" in out and out.rstrip().endswith("OK")
    assert run_cli("--inventory", str(EXAMPLE), "--out", str(tmp_path / "o")) == 0
    assert (tmp_path / "o" / "boards" / "jetson-d" / "install.sh").exists()


def test_cli_reports_problems_with_key_paths(tmp_path, capsys):
    bad = tmp_path / "inv.toml"
    bad.write_text('[[boards]]\nid = "a"\naddress = "x"\n[[boards]]\nid = "b"\naddress = "y"\n')
    assert run_cli("--inventory", str(bad), "--check") == 1
    assert "the boards fall apart into 2 groups" in capsys.readouterr().err
    bad.write_text('[[boards]]\nid = "a!"\naddress = "x"\n')
    assert run_cli("--inventory", str(bad), "--check") == 1
    assert "boards.0.id = 'a!'" in capsys.readouterr().err
    assert run_cli("--inventory", str(tmp_path / "missing.toml"), "--check") == 1


def _systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    assert exe, "systemd-analyze is missing: `apt-get install systemd` (make test installs it)"
    return exe


def test_systemd_units_verify(tmp_path):
    """`systemd-analyze verify` on the rendered units; ExecStart must exist, so the venv is faked under tmp."""
    install_dir = tmp_path / "opt"
    (install_dir / "venv" / "bin").mkdir(parents=True)
    fake = install_dir / "venv" / "bin" / "edge-moa"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    out = tmp_path / "out"
    provision(parse_inventory(example(install_dir=str(install_dir))), out)
    units = tmp_path / "units"
    units.mkdir()
    for board in ("pi-a", "jetson-d"):
        unit = (out / "boards" / board / "systemd" / "edge-moa-agent.service").read_text()
        (units / f"edge-moa-agent-{board}.service").write_text(unit)
        # the drop-in as systemd applies it: Debian's mosquitto.service, then our [Service] overrides
        debian = Path("/lib/systemd/system/mosquitto.service")
        assert debian.exists(), "Debian's mosquitto package provides mosquitto.service"
        dropin = (out / "boards" / board / "systemd" / "mosquitto.service.d" / "edge-moa.conf").read_text()
        (units / f"mosquitto-{board}.service").write_text(debian.read_text() + "\n" + dropin)
    files = sorted(str(p) for p in units.iterdir())
    proc = subprocess.run([_systemd_analyze(), "verify", *files], capture_output=True, text=True, cwd=units, check=False)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr
