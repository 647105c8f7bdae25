"""A provisioned gateway: its bundle files, its unit verified by systemd, and its identity through the real ACL."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import urllib.request

import openai
import pytest

from edge_agent.errors import PeerTimeoutError
from edge_agent.mqtt.client import MoaClient
from edge_agent.mqtt.transport import BrokerSettings
from edge_agent.provision import in_place_layout, parse_inventory, provision
from tests.conftest import attach_on_failure
from tests.integration.gateway_helpers import GatewayProcess
from tests.integration.mesh_helpers import AgentProcesses, ProvisionedMesh, wait_until
from tests.integration.test_mesh_provision import example

pytestmark = pytest.mark.slow


def test_gateway_files_only_where_asked(tmp_path):
    data = example()
    first = data["boards"][0]["id"]
    data["boards"][0]["gateway"] = True
    provision(parse_inventory(data), tmp_path)
    for board in (b["id"] for b in data["boards"]):
        bundle = tmp_path / "boards" / board
        assert (bundle / "systemd" / "edge-moa-gateway.service").exists()  # in every bundle, enabled where asked
        has = (bundle / "credentials" / "gateway-api-key").exists()
        assert has == (board == first), board
        if has:
            for name in ("gateway-api-key", "gateway-password"):
                assert stat.S_IMODE((bundle / "credentials" / name).stat().st_mode) == 0o600
            assert len((bundle / "credentials" / "gateway-api-key").read_text().strip()) >= 16
            assert f"gateway.{board}:" in (bundle / "mosquitto" / "passwd").read_text()


def test_gateway_unit_verifies(tmp_path):
    exe = shutil.which("systemd-analyze")
    assert exe, "systemd-analyze is missing: `apt-get install systemd` (make test installs it)"
    install_dir = tmp_path / "opt"
    (install_dir / "venv" / "bin").mkdir(parents=True)
    fake = install_dir / "venv" / "bin" / "edge-moa"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    data = example(install_dir=str(install_dir), gateway=True)
    provision(parse_inventory(data), tmp_path / "out")
    board = data["boards"][0]["id"]
    unit = tmp_path / "edge-moa-gateway.service"
    unit.write_text((tmp_path / "out" / "boards" / board / "systemd" / "edge-moa-gateway.service").read_text())
    proc = subprocess.run([exe, "verify", str(unit)], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


def test_provisioned_gateway_asks_through_tls_and_the_acl(tmp_path, request):
    mesh = ProvisionedMesh(tmp_path / "mesh", tls=True, layers=1, proposers=1, gateway=True)
    agents = AgentProcesses(mesh)
    bundle = mesh.out / "boards" / "b"
    layout = in_place_layout(bundle)
    creds = bundle / "credentials"
    args = ["--username", "gateway.b", "--password-file", str(creds / "gateway-password"),
            "--tls-ca-file", layout.agent_ca_file, "--tls-cert-file", layout.agent_cert_file,
            "--tls-key-file", layout.agent_key_file]
    api_key = (creds / "gateway-api-key").read_text().strip()
    gateway = GatewayProcess(f"127.0.0.1:{mesh.ports['b']}", "b", mesh.root, tmp_path, api_key=api_key, extra=args)
    try:
        mesh.start()
        for board in "abcd":
            agents.start(board)
        gateway.start()
        # a prompt published before its agent first subscribed has nobody to go to: wait for every agent
        assert wait_until(lambda: json.loads(urllib.request.urlopen(gateway.url + "/health", timeout=5).read())
                          .get("agents_online") == 4, 60), "agents not online"
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key, max_retries=0, timeout=60)
        result = client.chat.completions.create(model="moa-M1-k1", messages=[{"role": "user", "content": "Hi"}])
        moa = result.model_extra["moa"]
        assert moa["device"] == "b" and result.choices[0].message.content and moa["inferences"] == 3
        # the ACL lets the gateway's identity prompt only its own board: a prompt to `a` is dropped by the broker
        settings = BrokerSettings(host="127.0.0.1", port=mesh.ports["b"], username="gateway.b",
                                  password=(creds / "gateway-password").read_text().strip(),
                                  tls_ca_file=layout.agent_ca_file, tls_cert_file=layout.agent_cert_file,
                                  tls_key_file=layout.agent_key_file)
        with MoaClient(settings, topic_root=mesh.root) as as_gateway:
            assert "error" not in as_gateway.ask("b", "Hi", layers=0, timeout_s=30)
            with pytest.raises(PeerTimeoutError):
                as_gateway.ask("a", "Hi", layers=0, timeout_s=3)
    finally:
        attach_on_failure(request, "logs", lambda: mesh.logs() + agents.logs() + gateway.log())
        gateway.stop()
        agents.stop()
        mesh.stop()
