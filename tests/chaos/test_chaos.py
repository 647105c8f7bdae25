"""Faults and hostile input against real Mosquitto and real agent processes (synthetic engine): every prompt the
broker acknowledged is counted, and each must end answered once or errored once; no agent may die from input."""

from __future__ import annotations

import pytest

from edge_agent.local.chaos import (
    ChaosConfig,
    scenario_broker_kill,
    scenario_fuzz,
    scenario_held_poison,
    scenario_kill,
)
from tests.conftest import attach_on_failure

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


def assert_exactly_once(outcome, expected_prompts: int) -> None:
    print(outcome.line())
    assert outcome.prompts == expected_prompts, outcome.line()
    assert outcome.lost == 0 and outcome.duplicated == 0, outcome.line()
    assert outcome.answered + outcome.errored == outcome.prompts, outcome.line()
    assert outcome.extra.get("tracebacks", 0) == 0, outcome.line()


@pytest.fixture
def workdir(tmp_path, request):
    yield tmp_path
    attach_on_failure(request, "agent logs", lambda: "\n".join(
        f"--- {p}\n{p.read_text(errors='replace')[-4000:]}" for p in sorted(tmp_path.glob("*/agent.log"))))


@pytest.mark.parametrize("victim", ["proposer", "origin"])
def test_kill_9_of_an_agent_under_load(workdir, victim):
    cfg = ChaosConfig(prompts=40, seed=3 if victim == "origin" else 4)
    outcome = scenario_kill(cfg, workdir, victim=victim)
    assert_exactly_once(outcome, 40)
    assert outcome.answered >= 38, outcome.line()  # errors only for a prompt caught mid-kill, if any


def test_kill_9_of_mosquitto_with_persistence(workdir):
    outcome = scenario_broker_kill(ChaosConfig(prompts=40, seed=5), workdir)
    assert_exactly_once(outcome, outcome.prompts)
    assert outcome.prompts >= 35, outcome.line()  # a prompt the broker never acknowledged is not counted


def test_fuzzed_payloads_on_every_topic_cost_only_themselves(workdir):
    cfg = ChaosConfig(fuzz=2000, seed=6)
    good, bad = scenario_fuzz(cfg, workdir)
    print(bad.line())
    assert_exactly_once(good, good.prompts)
    assert good.answered == good.prompts and good.extra["agents_alive"] == cfg.agents
    assert good.extra["peers_used_after"] == cfg.proposers + 1, good.line()  # no forged status believed
    assert bad.lost == 0 and bad.duplicated == 0, bad.line()  # every fuzzed prompt got its one reply


def test_poisoned_prompt_among_prompts_held_for_a_restarting_agent(workdir):
    outcome = scenario_held_poison(ChaosConfig(), workdir)
    assert_exactly_once(outcome, 12)
    assert outcome.errors == {"invalid_request": 1}, outcome.line()
