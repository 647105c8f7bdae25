"""The MoA state machine without a broker or a model: who gets what, in which layer, and what it costs."""

import random

import pytest

from edge_agent.agent.moa import (
    ELLIPSIS,
    Finish,
    LayerDone,
    MoaRun,
    MoaTimeouts,
    RunLocal,
    RunRank,
    SendTask,
    cap_reference,
    inferences_per_prompt,
    proposal_messages,
    synthesis_text,
)
from edge_agent.config import REFERENCE_MAX_CHARS, SYNTHESIS_SYSTEM_PROMPT
from edge_agent.ranking.select import Ranking
from edge_agent.wire.messages import ErrorBody, UserRequest

PEERS = ["b", "c", "d", "e"]


def make_run(layers, proposers, **timeouts) -> MoaRun:
    request = UserRequest(request_id="r1", device="a", prompt="Why is the sky blue?", reply_topic="t",
                          layers=layers, proposers=proposers, max_new_tokens=16, temperature=0.7, received_at=0.0)
    return MoaRun(request=request, self_id="a", system_prompt=SYNTHESIS_SYSTEM_PROMPT,
                  timeouts=MoaTimeouts(**timeouts))


def drive(run: MoaRun, alive=PEERS, seed=0, answer=lambda device, task: f"{device}:L{task.layer}"):
    """Answer every task at once (acks then results) until the run finishes; return (finish, tasks seen)."""
    rng = random.Random(seed)
    pending = list(run.start(alive, rng, now=0.0))
    tasks = []
    while pending:
        action = pending.pop(0)
        if isinstance(action, (SendTask, RunLocal)):
            device = action.device if isinstance(action, SendTask) else "a"
            tasks.append((device, action.task))
            if isinstance(action, SendTask):
                pending += run.on_ack(device, action.task.task_id, True, None, 1.0, alive, rng, now=0.0)
            pending += run.on_result(device, action.task.task_id, answer(device, action.task), None, 0.5, alive, rng,
                                     now=0.0)
        elif isinstance(action, Finish):
            return action, tasks
    raise AssertionError("run did not finish")


@pytest.mark.parametrize("layers,proposers", [(0, 0), (1, 1), (1, 2), (2, 2), (3, 4), (2, 3)])
def test_inference_count_and_distinct_proposers(layers, proposers):
    finish, tasks = drive(make_run(layers, proposers))
    assert finish.error is None
    assert finish.inferences == inferences_per_prompt(layers, proposers) == len(tasks)
    assert [t.layer for t in finish.trace] == list(range(1, layers + 2))
    for layer in finish.trace[:-1]:
        devices = [e.device for e in layer.answered]
        assert devices[0] == "a" and len(set(devices)) == len(devices) == proposers + 1
    assert [e.device for e in finish.trace[-1].answered] == ["a"]
    assert finish.trace[-1].kind == "aggregate"


def test_layer_one_gets_the_bare_prompt_and_later_layers_the_previous_answers():
    finish, tasks = drive(make_run(2, 1))
    first = [t for _, t in tasks if t.layer == 1]
    assert all(len(t.messages) == 1 and t.messages[0].content == "Why is the sky blue?" for t in first)
    second = [t for _, t in tasks if t.layer == 2]
    layer1_answers = [e.device + ":L1" for e in finish.trace[0].answered]
    expected = synthesis_text(SYNTHESIS_SYSTEM_PROMPT, layer1_answers)
    assert all(t.messages[0].role == "system" and t.messages[0].content == expected for t in second)
    assert all(t.messages[1].content == "Why is the sky blue?" for t in second)
    final = [t for _, t in tasks if t.layer == 3]
    assert "Response-2: " in final[0].messages[0].content and "Response-3" not in final[0].messages[0].content
    assert finish.response == "a:L3"


def test_synthesis_text_numbers_answers():
    text = synthesis_text("SYS", ["one", "two"])
    assert text == "SYS\n\nResponse-1: one\n\nResponse-2: two"
    assert proposal_messages("p", "SYS", [])[0].role == "user"


def test_peers_are_drawn_uniformly():
    counts = {p: 0 for p in PEERS}
    for seed in range(2000):
        run = make_run(1, 2)
        for action in run.start(PEERS, random.Random(seed), now=0.0):
            if isinstance(action, SendTask):
                counts[action.device] += 1
    # each peer is picked with probability k/n = 1/2 per prompt
    assert all(abs(c / 2000 - 0.5) < 0.05 for c in counts.values()), counts


def test_fewer_alive_peers_than_k_is_recorded():
    finish, _ = drive(make_run(1, 3), alive=["b"])
    assert [e.device for e in finish.trace[0].answered] == ["a", "b"]
    assert finish.trace[0].requested == 4
    assert finish.inferences == 3


def test_busy_peer_is_replaced_by_another_alive_one():
    run = make_run(1, 1)
    rng = random.Random(1)
    actions = run.start(["b", "c"], rng, now=0.0)
    sent = next(a for a in actions if isinstance(a, SendTask))
    moved = run.on_ack(sent.device, sent.task.task_id, False, "busy", 0.0, ["b", "c"], rng, now=0.1)
    assert len(moved) == 1 and isinstance(moved[0], SendTask)
    assert moved[0].device != sent.device and moved[0].task.task_id != sent.task.task_id
    assert run.dropped[0].outcome == "busy" and run.dropped[0].device == sent.device


def test_unanswered_task_times_out_and_layer_goes_on_with_what_it_has():
    run = make_run(1, 1, ack_s=1.0, max_redispatch=0)
    rng = random.Random(0)
    actions = run.start(["b"], rng, now=0.0)
    local = next(a for a in actions if isinstance(a, RunLocal))
    assert run.on_result("a", local.task.task_id, "mine", None, 0.3, ["b"], rng, now=0.5) == []
    assert run.on_tick(["b"], rng, now=0.9) == []
    after = run.on_tick(["b"], rng, now=1.1)
    assert isinstance(after[0], LayerDone) and after[0].answers == ("mine",)
    assert run.trace[0].dropped[0].outcome == "ack_timeout"
    assert isinstance(after[1], RunLocal) and after[1].task.layer == 2


def test_accepted_task_deadline_follows_the_peers_estimate():
    run = make_run(1, 1, grace_s=2.0, eta_factor=1.5)
    rng = random.Random(0)
    sent = next(a for a in run.start(["b"], rng, now=0.0) if isinstance(a, SendTask))
    run.on_ack(sent.device, sent.task.task_id, True, None, 10.0, ["b"], rng, now=1.0)
    assert run.on_tick(["b"], rng, now=1.0 + 15 + 2 - 0.01) == []
    moved = run.on_tick(["b", "c"], rng, now=1.0 + 15 + 2 + 0.01)
    assert isinstance(moved[0], SendTask) and moved[0].device == "c"


def test_late_result_from_a_replaced_peer_is_ignored():
    run = make_run(1, 1)
    rng = random.Random(0)
    sent = next(a for a in run.start(["b", "c"], rng, now=0.0) if isinstance(a, SendTask))
    run.on_peer_gone(sent.device, ["b", "c"], rng, now=0.1)
    assert run.on_result(sent.device, sent.task.task_id, "late", None, 1.0, ["b", "c"], rng, now=0.2) == []


def test_own_inference_error_fails_the_request_with_its_code():
    run = make_run(1, 1)
    rng = random.Random(0)
    local = next(a for a in run.start(["b"], rng, now=0.0) if isinstance(a, RunLocal))
    out = run.on_result("a", local.task.task_id, None, ErrorBody(code="too_large", message="x"), 0.0, ["b"], rng, 0.1)
    assert isinstance(out[0], Finish) and out[0].error.code == "too_large"
    assert run.finished


def test_request_timeout():
    run = make_run(1, 1, request_s=5.0)
    rng = random.Random(0)
    run.start(["b"], rng, now=0.0)
    out = run.on_tick(["b"], rng, now=5.0)
    assert isinstance(out[0], Finish) and out[0].error.code == "timeout"


def test_resume_from_checkpoint_starts_at_the_recorded_layer():
    first = make_run(2, 1)
    finish, _ = drive(first)
    resumed = make_run(2, 1)
    resumed.layer, resumed.previous, resumed.trace = 2, ["x", "y"], list(finish.trace[:1])
    actions = resumed.start(PEERS, random.Random(0), now=0.0)
    assert all(a.task.layer == 2 for a in actions)
    assert "Response-1: x\n\nResponse-2: y" in actions[0].task.messages[0].content


def test_speed_aware_choice_keeps_the_lowest_expected_wait_of_d_candidates():
    from edge_agent.agent.peers import choose_peers

    wait = {"b": 5.0, "c": 1.0, "d": 3.0, "e": 0.5}
    rng = random.Random(0)
    assert choose_peers(PEERS, 2, rng, exclude={"a"}, cost=wait.get, candidates=4) == ["e", "c"]
    picks = [choose_peers(PEERS, 1, random.Random(s), cost=wait.get, candidates=2)[0] for s in range(400)]
    assert picks.count("b") == 0  # the slowest is never the better of two
    assert picks.count("e") > picks.count("c") > picks.count("d")


def test_speed_aware_run_routes_around_a_loaded_peer():
    wait = {"b": 100.0, "c": 1.0, "d": 1.0, "e": 1.0}
    run = make_run(1, 2)
    run.peer_cost, run.peer_candidates = wait.get, 4
    sent = [a.device for a in run.start(PEERS, random.Random(3), now=0.0) if isinstance(a, SendTask)]
    assert "b" not in sent and len(sent) == 2


def test_results_and_acks_count_only_from_the_peer_the_current_task_went_to():
    run = make_run(1, 1, max_redispatch=2)
    rng = random.Random(0)
    actions = run.start(["b", "c", "d"], rng, now=0.0)
    first = next(a for a in actions if isinstance(a, SendTask))
    local = next(a for a in actions if isinstance(a, RunLocal))
    other = next(d for d in ["b", "c", "d"] if d != first.device)
    # a forged ack and result from another agent for the same task id change nothing
    assert run.on_ack(other, first.task.task_id, True, None, 1.0, ["b", "c", "d"], rng, now=0.1) == []
    assert run.on_result(other, first.task.task_id, "forged", None, 1.0, ["b", "c", "d"], rng, now=0.1) == []
    # the slot moves on (ack timeout); the first peer's late result must not be credited to the replacement
    moved = run.on_tick(["b", "c", "d"], rng, now=10.0)
    replacement = next(a for a in moved if isinstance(a, SendTask))
    assert replacement.device != first.device
    assert run.on_result(first.device, first.task.task_id, "late", None, 9.0, ["b", "c", "d"], rng, now=10.1) == []
    assert run.on_result(replacement.device, first.task.task_id, "x", None, 9.0, ["c"], rng, now=10.1) == []
    run.on_result("a", local.task.task_id, "mine", None, 0.2, ["b", "c", "d"], rng, now=10.2)
    run.on_ack(replacement.device, replacement.task.task_id, True, None, 1.0, ["b", "c", "d"], rng, now=10.2)
    done = run.on_result(replacement.device, replacement.task.task_id, "theirs", None, 0.7, ["b", "c", "d"], rng,
                         now=10.3)
    assert isinstance(done[0], LayerDone) and sorted(done[0].answers) == ["mine", "theirs"]
    entry = next(e for e in run.trace[0].answered if e.device == replacement.device)
    assert entry.inference_s == 0.7


def test_own_slot_has_a_deadline_from_the_local_estimate():
    run = make_run(1, 0, grace_s=2.0, eta_factor=1.5)
    run.local_eta = lambda: 4.0
    rng = random.Random(0)
    run.start([], rng, now=0.0)
    assert run.on_tick([], rng, now=0.0 + 4.0 * 1.5 + 2.0 - 0.01) == []
    out = run.on_tick([], rng, now=0.0 + 4.0 * 1.5 + 2.0 + 0.01)
    # nobody else to take the slot over: the request ends with a timeout, its one reply
    assert isinstance(out[0], Finish) and out[0].error.code == "timeout" and run.finished


def test_own_slot_outliving_its_estimate_is_kept_while_the_engine_makes_progress():
    """A loaded board whose task outgrew the estimate is slow, not hung: its slot waits; a hung one fails."""
    run = make_run(1, 0, grace_s=2.0, eta_factor=1.5)
    run.local_eta = lambda: 4.0
    healthy = [True]
    run.local_healthy = lambda: healthy[0]
    rng = random.Random(0)
    local = run.start([], rng, now=0.0)[0]
    assert run.on_tick([], rng, now=8.01) == [] and not run.finished  # past 4 * 1.5 + 2: extended
    assert run.on_tick([], rng, now=15.0) == []
    done = run.on_result("a", local.task.task_id, "late but right", None, 15.0, [], rng, now=15.5)
    assert isinstance(done[0], LayerDone) and done[0].answers == ("late but right",)
    run2 = make_run(1, 0, grace_s=2.0, eta_factor=1.5)
    run2.local_eta, run2.local_healthy = (lambda: 4.0), (lambda: False)
    run2.start([], rng, now=0.0)
    out = run2.on_tick([], rng, now=8.01)
    assert isinstance(out[0], Finish) and out[0].error.code == "timeout"


# ---------------------------------------------------------------- aggregation strategies


def select_run(layers, proposers, **fields) -> MoaRun:
    run = make_run(layers, proposers)
    run.request = run.request.model_copy(update={"aggregation": "select", **fields})
    return run


def drive_select(run: MoaRun, alive=PEERS, rank=None, answer=lambda device, task: f"{device}:L{task.layer}"):
    """As `drive`, answering a RunRank with `rank(action) -> (Ranking | None, ErrorBody | None)`."""
    rng = random.Random(0)
    pending = list(run.start(alive, rng, now=0.0))
    seen = []
    while pending:
        action = pending.pop(0)
        seen.append(action)
        if isinstance(action, (SendTask, RunLocal)):
            device = action.device if isinstance(action, SendTask) else "a"
            if isinstance(action, SendTask):
                pending += run.on_ack(device, action.task.task_id, True, None, 1.0, alive, rng, now=0.0)
            pending += run.on_result(device, action.task.task_id, answer(device, action.task), None, 0.5, alive,
                                     rng, now=0.0, new_tokens=7)
        elif isinstance(action, RunRank):
            ranking, error = rank(action)
            pending += run.on_ranked(action.task_id, ranking, error, 0.25, now=0.0)
        elif isinstance(action, Finish):
            return action, seen
    raise AssertionError("run did not finish")


def test_select_returns_the_ranked_best_proposal_verbatim_without_generating():
    ranks = []

    def rank(action):
        ranks.append(action)
        return Ranking(picked=2, scores=(3.0, 4.0, 8.5), prompt_tokens=120, prompts=3), None

    finish, seen = drive_select(select_run(1, 2, select_ranker="pairwise"), rank=rank)
    proposals = [e.device + ":L1" for e in finish.trace[0].answered]
    assert finish.error is None and finish.response == proposals[2]
    assert len(ranks) == 1 and list(ranks[0].answers) == proposals and ranks[0].ranker == "pairwise"
    assert ranks[0].instruction == "Why is the sky blue?"
    assert not [a for a in seen if isinstance(a, RunLocal) and a.task.layer == 2]  # no aggregation generation
    step = finish.trace[-1]
    assert step.kind == "select" and step.picked == 2 and step.scores == [3.0, 4.0, 8.5]
    assert step.ranker == "pairwise" and step.answered[0].inference_s == 0.25
    assert step.answered[0].new_tokens == 0 and step.answered[0].prompt_tokens == 120
    assert finish.inferences == inferences_per_prompt(1, 2)  # 3 proposals + 1 ranking job


def test_select_with_one_proposal_returns_it_without_ranking():
    def rank(action):
        raise AssertionError("nothing to rank")

    finish, seen = drive_select(select_run(1, 2), alive=[], rank=rank)
    assert finish.error is None and finish.response == "a:L1"
    assert not any(isinstance(a, RunRank) for a in seen)
    step = finish.trace[-1]
    assert step.kind == "select" and step.picked == 0 and step.scores is None and step.answered == []
    assert finish.inferences == 1


def test_a_ranker_error_is_the_one_error_reply():
    finish, seen = drive_select(select_run(1, 1), rank=lambda action: (None, ErrorBody(code="inference_failed",
                                                                                       message="boom")))
    assert finish.error.code == "inference_failed" and "ranking the proposals failed: boom" in finish.error.message
    assert sum(isinstance(a, Finish) for a in seen) == 1


def test_a_ranking_past_its_deadline_times_out_and_never_moves_to_a_peer():
    run = select_run(1, 1)
    run.local_eta = lambda: 1.0
    rng = random.Random(0)
    actions = run.start(["b"], rng, now=0.0)
    sent = next(a for a in actions if isinstance(a, SendTask))
    local = next(a for a in actions if isinstance(a, RunLocal))
    run.on_result("a", local.task.task_id, "mine", None, 0.1, ["b"], rng, now=0.1)
    run.on_ack("b", sent.task.task_id, True, None, 1.0, ["b"], rng, now=0.1)
    out = run.on_result("b", sent.task.task_id, "theirs", None, 0.1, ["b"], rng, now=0.2)
    rank = next(a for a in out if isinstance(a, RunRank))
    late = run.on_tick(["b", "c"], rng, now=100.0)
    assert len(late) == 1 and isinstance(late[0], Finish) and late[0].error.code == "timeout"
    assert run.on_ranked(rank.task_id, Ranking(0, (1.0, 2.0), 1, 2), None, 1.0, now=101.0) == []


def test_select_resumes_at_its_ranking_after_a_restart():
    resumed = select_run(1, 2)
    resumed.layer, resumed.previous = 2, ["x", "y", "z"]
    actions = resumed.start(PEERS, random.Random(0), now=0.0)
    assert len(actions) == 1 and isinstance(actions[0], RunRank) and actions[0].answers == ("x", "y", "z")
    done = resumed.on_ranked(actions[0].task_id, Ranking(1, (1.0, 9.0, 2.0), 10, 3), None, 0.1, now=0.2)
    assert isinstance(done[0], Finish) and done[0].response == "y"


def test_select_with_no_layers_generates_the_answer():
    finish, _ = drive_select(select_run(0, 0), rank=lambda action: (_ for _ in ()).throw(AssertionError()))
    assert finish.response == "a:L1" and finish.trace[-1].kind == "aggregate"


def test_reference_cap_cuts_at_a_word_boundary_and_says_so():
    text = "The quick brown fox jumps over the lazy dog. " * 20
    cut = cap_reference(text, 50)
    assert len(cut) <= 50 and cut.endswith(ELLIPSIS) and cut == "The quick brown fox jumps over the lazy dog." + ELLIPSIS
    assert cap_reference(text, 0) == text and cap_reference("short", 50) == "short"
    assert cap_reference("x" * 100, 20) == "x" * (20 - len(ELLIPSIS)) + ELLIPSIS  # one long word: cut inside it
    answer_256_tokens = " ".join(["abcdefgh"] * 256)  # ~2,300 chars: more than any 256-token answer has
    assert cap_reference(answer_256_tokens, REFERENCE_MAX_CHARS) == answer_256_tokens


def test_capped_references_in_layer_two_and_the_aggregation_prompt():
    run = make_run(2, 1)
    run.request = run.request.model_copy(update={"reference_max_chars": 30})
    long = "word " * 100
    finish, tasks = drive(run, answer=lambda device, task: long)
    for _, task in tasks:
        if task.layer >= 2:
            system = task.messages[0].content
            assert system.count(ELLIPSIS) == 2 and long not in system
            assert all(len(part.split(": ", 1)[1]) <= 30 for part in system.split("\n\nResponse-")[1:])
    assert finish.response == long  # the answer itself is never cut


def test_a_slot_on_a_peer_that_stops_being_alive_moves_before_its_deadline():
    run = make_run(1, 1, grace_s=2.0, eta_factor=1.5)
    rng = random.Random(0)
    sent = next(a for a in run.start(["b", "c"], rng, now=0.0) if isinstance(a, SendTask))
    run.on_ack(sent.device, sent.task.task_id, True, None, 300.0, ["b", "c"], rng, now=1.0)  # a long estimate
    assert run.on_tick(["b", "c"], rng, now=20.0) == []  # still heard from: it keeps its deadline (452 s)
    spare = "c" if sent.device == "b" else "b"
    moved = run.on_tick([spare], rng, now=21.0)  # no heartbeat for the peer timeout (a cut link, no will)
    assert isinstance(moved[0], SendTask) and moved[0].device == spare
    assert [(e.device, e.outcome) for e in run.dropped] == [(sent.device, "unreachable")]
    assert run.on_result(sent.device, sent.task.task_id, "late", None, 9.0, [spare], rng, now=22.0) == []
