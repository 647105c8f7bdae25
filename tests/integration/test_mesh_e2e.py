"""Agents run from provisioned bundles (TLS, passwords, ACL) on four bridged brokers: one answer per prompt."""

from __future__ import annotations

import json
import time

import pytest

from edge_agent.mqtt.client import MoaClient
from edge_agent.mqtt.transport import BrokerSettings
from tests.conftest import attach_on_failure
from tests.integration.mesh_helpers import AgentProcesses, ProvisionedMesh, wait_until

pytestmark = pytest.mark.slow
BOARDS = "abcd"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    # brokers bound to 127.0.0.2 only: the agents must find theirs from the bundle's agent.toml (issue 10: `bind`)
    mesh = ProvisionedMesh(tmp_path_factory.mktemp("e2e"), tls=True, host="127.0.0.2", layers=1, proposers=2)
    agents = AgentProcesses(mesh)
    try:
        mesh.start()
        for board in BOARDS:
            agents.start(board)
        yield mesh, agents
    finally:
        agents.stop()
        mesh.stop()


@pytest.fixture(autouse=True)
def _attach_logs(request, fleet):
    yield
    mesh, agents = fleet
    attach_on_failure(request, "logs", lambda: mesh.logs() + "\n" + agents.logs())


def app_settings(mesh: ProvisionedMesh, board: str) -> BrokerSettings:
    app = mesh.identity("app")
    return BrokerSettings(host=mesh.host, port=mesh.ports[board], username=app.name, password=app.password,
                          tls_ca_file=str(app.ca), tls_cert_file=str(app.cert), tls_key_file=str(app.key))


def test_each_prompt_gets_exactly_one_answer_with_proposals_from_other_boards(fleet):
    mesh, _ = fleet
    with mesh.client("c", mesh.identity("app")) as watcher:
        assert watcher.connect(), watcher.reason
        watcher.subscribe(mesh.topic("+", "answer", "#"))
        with MoaClient(app_settings(mesh, "d"), topic_root=mesh.root) as client:
            client.watch_status()
            client.wait_for_agents(list(BOARDS), timeout_s=30)
            futures = {device: client.submit(device, f"question for {device}") for device in "abc"}
            answers = {device: future.result(timeout=60) for device, future in futures.items()}
        for device, answer in answers.items():
            assert "error" not in answer, answer
            assert answer["device"] == device and answer["inferences"] == 4
            proposers = [entry["device"] for entry in answer["trace"][0]["answered"]]
            assert proposers[0] == device and len(set(proposers)) == 3
            assert set(proposers) - {device} <= set(BOARDS)
        assert wait_until(lambda: len(watcher.received()) >= 3, 10)
        time.sleep(1.0)
        request_ids = [json.loads(payload)["request_id"] for _, payload in watcher.received()]
        assert sorted(request_ids) == sorted(a["request_id"] for a in answers.values())


def test_status_of_every_agent_is_visible_from_every_board(fleet):
    mesh, _ = fleet
    for board in BOARDS:
        with MoaClient(app_settings(mesh, board), topic_root=mesh.root) as client:
            client.watch_status()
            client.wait_for_agents(list(BOARDS), timeout_s=30)
            assert set(client.statuses()) >= set(BOARDS)
