"""Four real Mosquitto brokers run from provisioned bundles, links with a cycle: delivery, auth, ACL, TLS."""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest

from tests.conftest import attach_on_failure
from tests.integration.mesh_helpers import ProvisionedMesh, wait_until

BOARDS = "abcd"


@pytest.fixture(scope="module", params=[(True, "mqttv50"), (False, "mqttv50"), (True, "mqttv311")],
                ids=["tls", "plain", "tls-v311-bridges"])
def mesh(request, tmp_path_factory):
    tls, bridge_protocol = request.param
    mesh = ProvisionedMesh(tmp_path_factory.mktemp("mesh"), tls=tls, bridge_protocol=bridge_protocol).start()
    try:
        _wait_for_bridges(mesh)
        yield mesh
    finally:
        mesh.stop()


@pytest.fixture(autouse=True)
def _attach_logs(request, mesh):
    yield
    attach_on_failure(request, "mosquitto logs", mesh.logs)


def _wait_for_bridges(mesh: ProvisionedMesh, timeout_s: float = 20.0) -> None:
    """Until a retained probe from the deepest board is readable everywhere: every bridge is up."""
    probe = mesh.topic("d", "status")
    with mesh.client("d", mesh.identity("d")) as agent:
        assert agent.connect(), agent.reason
        agent.publish(probe, b'{"probe": true}', retain=True)
    for board in BOARDS:
        with mesh.client(board, mesh.identity("app")) as app:
            assert app.connect(), app.reason
            app.subscribe(probe)
            assert wait_until(lambda: app.received(probe), timeout_s), f"bridges to {board} not up\n{mesh.logs()}"


def _subscribers(mesh, topic):
    clients = {}
    for board in BOARDS:
        client = mesh.client(board, mesh.identity("app"))
        assert client.connect(), client.reason
        client.subscribe(topic)
        clients[board] = client
    return clients


def test_tree_leaves_out_one_link_of_the_cycle(mesh):
    assert len(mesh.tree.edges) == 3
    assert [sorted(link.between) for link in mesh.tree.left_out] == [["c", "d"]]


def test_every_publish_reaches_every_broker_exactly_once(mesh):
    request = uuid.uuid4().hex[:8]
    subscribers = _subscribers(mesh, mesh.topic("+", "answer", request))
    try:
        for board in BOARDS:
            with mesh.client(board, mesh.identity(board)) as agent:
                assert agent.connect(), agent.reason
                agent.publish(mesh.topic(board, "answer", request), f"from {board}")
        expected = sorted(mesh.topic(board, "answer", request) for board in BOARDS)
        for board, client in subscribers.items():
            assert wait_until(lambda c=client: len(c.received()) >= 4, 10), (board, client.received())
        time.sleep(1.0)  # a loop of bridges would keep delivering copies by now
        for board, client in subscribers.items():
            assert sorted(topic for topic, _ in client.received()) == expected, board
    finally:
        for client in subscribers.values():
            client.close()


def test_prompt_from_a_user_app_crosses_the_mesh_to_its_agent(mesh):
    with mesh.client("a", mesh.identity("a")) as agent_a:
        assert agent_a.connect(), agent_a.reason
        agent_a.subscribe(mesh.topic("a", "prompt"))
        with mesh.client("d", mesh.identity("narrow")) as app:
            assert app.connect(), app.reason
            app.publish(mesh.topic("a", "prompt"), "hello")
            app.publish(mesh.topic("b", "prompt"), "not allowed for narrow")
        assert wait_until(lambda: agent_a.received(), 10)
        time.sleep(0.5)
        assert [p for _, p in agent_a.received()] == [b"hello"]


@pytest.mark.parametrize("board", list(BOARDS))
def test_anonymous_and_wrong_password_are_refused(mesh, board):
    identity = mesh.identity(board)
    # with TLS, a valid certificate but no user name: still refused (allow_anonymous false)
    anonymous = mesh.client(board, identity, anonymous=True)
    assert not anonymous.connect()
    wrong = mesh.client(board, identity, password="not-the-password")
    assert not wrong.connect()
    assert "Not authorized" in (wrong.reason or "") or "Bad user name or password" in (wrong.reason or "")
    right = mesh.client(board, identity)
    assert right.connect(), right.reason
    right.close()


def test_board_credentials_work_only_on_their_own_broker(mesh):
    for board in BOARDS:
        for other in BOARDS:
            client = mesh.client(other, mesh.identity(board))
            assert client.connect() == (board == other), (board, other, client.reason)
            client.close()


def test_a_board_cannot_impersonate_another(mesh):
    request = uuid.uuid4().hex[:8]
    watch = [mesh.topic("+", "status"), mesh.topic("+", "answer", request)]
    observers = {}
    for board in BOARDS:
        observer = mesh.client(board, mesh.identity("app"))
        assert observer.connect(), observer.reason
        for topic in watch:
            observer.subscribe(topic)
        observers[board] = observer
    inbox_c = mesh.client("c", mesh.identity("c"))
    assert inbox_c.connect()
    inbox_c.subscribe(mesh.topic("c", "inbox", "+"))
    try:
        with mesh.client("b", mesh.identity("b")) as agent_b:
            assert agent_b.connect(), agent_b.reason
            agent_b.publish(mesh.topic("a", "status"), "forged status")
            agent_b.publish(mesh.topic("a", "answer", request), "forged answer")
            agent_b.publish(mesh.topic("c", "inbox", "a"), "forged task")
            agent_b.publish(mesh.topic("c", "inbox", "b"), "real task")  # control: allowed
            agent_b.publish(mesh.topic("b", "answer", request), "real answer")
        assert wait_until(lambda: inbox_c.received(), 10)
        assert wait_until(lambda: all(len(o.received(mesh.topic("b"))) >= 1 for o in observers.values()), 10)
        time.sleep(0.5)
        assert [p for _, p in inbox_c.received()] == [b"real task"]
        for board, observer in observers.items():
            forged = [m for m in observer.received() if b"forged" in m[1]]
            assert forged == [], board
    finally:
        inbox_c.close()
        for observer in observers.values():
            observer.close()


def test_a_bridge_carries_only_its_subtree_upward(mesh):
    # bridge.d logs in on b (d's parent): it may speak for d, never for a.
    request = uuid.uuid4().hex[:8]
    with mesh.client("a", mesh.identity("app")) as observer:
        assert observer.connect()
        observer.subscribe(mesh.topic("+", "answer", request))
        with mesh.client("b", mesh.identity("bridge.d")) as bridge:
            assert bridge.connect(), bridge.reason
            bridge.publish(mesh.topic("a", "answer", request), "forged by a bridge")
            bridge.publish(mesh.topic("d", "answer", request), "carried for d")
        assert wait_until(lambda: observer.received(), 10)
        time.sleep(0.5)
        assert [p for _, p in observer.received()] == [b"carried for d"]


def test_tls_is_required_when_on(mesh):
    if not mesh.tls:
        pytest.skip("plain mesh")
    identity = mesh.identity("app")
    plain = mesh.client("a", identity, tls=False)
    assert not plain.connect()
    no_cert = mesh.client("a", identity, cert=False)  # mutual TLS: a client must show a certificate
    assert not no_cert.connect()


def test_tls_refuses_a_certificate_from_another_ca(mesh, tmp_path):
    if not mesh.tls:
        pytest.skip("plain mesh")
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "2", "-subj", "/CN=app", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    identity = mesh.identity("app")
    identity.cert, identity.key = cert, key
    stranger = mesh.client("a", identity)
    assert not stranger.connect()
