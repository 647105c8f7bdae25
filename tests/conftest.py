"""Shared fixtures: a real Mosquitto per test module, a unique topic root per test, model directories."""

from __future__ import annotations

import uuid

import pytest

from edge_agent.mqtt.broker_process import MosquittoProcess

pytest_plugins = ["tests.model_fixtures"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def attach_on_failure(request, title: str, text) -> None:
    """After a test, add `text()` (logs) to its report if it failed."""
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        report.sections.append((title, text()))


@pytest.fixture(scope="module")
def _module_broker():
    # A missing mosquitto is an error, not a skip: MosquittoProcess raises with what to install.
    with MosquittoProcess() as broker:
        yield broker


@pytest.fixture
def broker(_module_broker, request):
    """A real Mosquitto on a free port; its log is attached to a failing test's report."""
    yield _module_broker
    attach_on_failure(request, "mosquitto log", lambda: _module_broker.log()[-5000:])


@pytest.fixture
def topic_root() -> str:
    """Each test its own topic root, so retained statuses and answers of other tests never leak in."""
    return f"test/{uuid.uuid4().hex[:10]}/moa"
