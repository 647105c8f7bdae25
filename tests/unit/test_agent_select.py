"""`moa.aggregation = select` on the in-memory broker with the synthetic engine: every prompt answered once, the
answer one proposal verbatim, the ranking one score job on the origin's worker; per-request options validated."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

from edge_agent.engine import ChatMessage, GenerationRequest
from edge_agent.engine.synthetic import SyntheticEngine
from edge_agent.engine.worker import InferenceWorker, Job, ScoreJob
from edge_agent.errors import InferenceError
from edge_agent.mqtt.memory import MemoryBroker
from edge_agent.wire.messages import UserRequest
from tests.unit.agent_harness import User, kill, make_agent, started, stopped, wait_for

TEMPLATE = ("<|im_start|>system\nYou judge.\n<|im_end|>\n<|im_start|>user\nQ: {instruction}\nm: {output_1}\n"
            "M: {output_2}\nWhich?\n<|im_end|>")


def run(coro):
    asyncio.run(asyncio.wait_for(coro, 60))


def mesh(broker, tmp_path, **moa):
    # generous ack timeout: on a loaded machine a late ack would drop a proposal, and these tests count three
    moa = {"aggregation": "select", "ack_timeout_s": 30.0, **moa}
    agents = [make_agent(broker, d, tmp_path, moa=moa) for d in ("a", "b", "c")]
    for agent in agents:  # distinct proposals: the synthetic echo starts with the model id
        agent.engine.model_id = f"model-{agent.device}"
    return agents


def check_select_answer(answer: dict, ranker: str) -> None:
    proposals, step = answer["trace"][0]["answered"], answer["trace"][-1]
    assert step["kind"] == "select" and step["ranker"] == ranker and len(step["scores"]) == len(proposals) == 3
    picked = proposals[step["picked"]]
    assert answer["response"].startswith(f"[model-{picked['device']} ")
    assert step["answered"][0]["device"] == "a" and step["answered"][0]["new_tokens"] == 0
    assert step["answered"][0]["inference_s"] > 0 and step["answered"][0]["prompt_tokens"] > 0
    usage = answer["usage"]
    assert usage["completion_tokens"] == picked["new_tokens"]
    assert usage["generated_tokens"] == sum(e["new_tokens"] for e in proposals)
    assert usage["ranking_prompt_tokens"] == step["answered"][0]["prompt_tokens"]
    assert answer["inferences"] == 4


def test_select_answers_every_prompt_once_with_one_of_the_proposals(tmp_path):
    template = tmp_path / "clf.txt"
    template.write_text(TEMPLATE)

    async def scenario():
        broker = MemoryBroker()
        agents = mesh(broker, tmp_path, pairwise_template_file=str(template))
        await started(*agents)
        user = User(broker)
        asks = {}
        for i in range(12):
            options = [{}, {"select_ranker": "pairwise"}, {"aggregation": "synthesize"}][i % 3]
            asks[user.ask("a", f"r{i}", prompt=f"question {i} about the sea", **options)] = options
        await wait_for(lambda: all(user.finals(t) for t in asks), what="answers")
        await asyncio.sleep(0.2)
        assert [len(user.finals(t)) for t in asks] == [1] * 12
        for topic, options in asks.items():
            answer = user.finals(topic)[0]
            if options.get("aggregation") == "synthesize":
                assert answer["trace"][-1]["kind"] == "aggregate" and "ranking_prompt_tokens" not in answer["usage"]
            else:
                check_select_answer(answer, options.get("select_ranker", "pointwise"))
        a = agents[0]
        assert a.worker.served_total == a.counts["served"] and len(a.admission.ledger) == 0
        assert broker.unacked("edge-moa-agent-a") == []
        await stopped(*agents)

    run(scenario())


def test_bad_per_request_options_get_one_clear_error(tmp_path):
    async def scenario():
        broker = MemoryBroker()
        agents = mesh(broker, tmp_path, pairwise_template_file=str(tmp_path / "missing.txt"))
        await started(*agents)
        user = User(broker)
        vote = user.ask("a", "vote", aggregation="vote")
        negative = user.ask("a", "neg", reference_max_chars=-1)
        pairwise = user.ask("a", "pair", select_ranker="pairwise")  # no template on this agent
        fine = user.ask("a", "fine", reference_max_chars=10)
        await wait_for(lambda: all(user.finals(t) for t in (vote, negative, pairwise, fine)), what="replies")
        await asyncio.sleep(0.2)
        for topic, fragment in ((vote, "aggregation"), (negative, "reference_max_chars"), (pairwise, "template")):
            replies = user.finals(topic)
            assert len(replies) == 1 and replies[0]["error"]["code"] == "invalid_request", replies
            assert fragment in replies[0]["error"]["message"]
        assert len(user.finals(fine)) == 1 and "response" in user.finals(fine)[0]
        await stopped(*agents)

    run(scenario())


def test_a_failing_ranking_fails_its_own_prompt_alone(tmp_path):
    async def scenario():
        broker = MemoryBroker()
        agents = mesh(broker, tmp_path)
        score = agents[0].engine.score_labels

        def poisoned(messages, labels):
            if any("poison" in m.content for m in messages):
                raise InferenceError("the ranking prefill failed")
            return score(messages, labels)

        agents[0].engine.score_labels = poisoned
        await started(*agents)
        user = User(broker)
        topics = [user.ask("a", f"p{i}", prompt="poison" if i == 2 else f"question {i}") for i in range(5)]
        await wait_for(lambda: all(user.finals(t) for t in topics), what="replies")
        await asyncio.sleep(0.2)
        replies = [user.finals(t) for t in topics]
        assert all(len(r) == 1 for r in replies)
        assert replies[2][0]["error"]["code"] == "inference_failed"
        assert "ranking the proposals failed" in replies[2][0]["error"]["message"]
        assert all("response" in r[0] for i, r in enumerate(replies) if i != 2)
        assert len(agents[0].admission.ledger) == 0
        await stopped(*agents)

    run(scenario())


def test_the_journaled_strategy_survives_a_restart_under_another_default(tmp_path):
    async def scenario():
        broker = MemoryBroker()
        slow = make_agent(broker, "a", tmp_path, moa={"layers": 1, "proposers": 0},
                          engine={"synthetic_service_s": 5.0})
        await started(slow)
        user = User(broker)
        topic = user.ask("a", "kept", aggregation="select", reference_max_chars=123)
        await wait_for(lambda: slow.journal.in_progress("kept"))
        kill(slow)
        db = sqlite3.connect(tmp_path / "a.journal.sqlite")
        request = UserRequest.model_validate_json(db.execute("SELECT request FROM prompts").fetchone()[0])
        db.close()
        assert request.aggregation == "select" and request.reference_max_chars == 123
        again = make_agent(broker, "a", tmp_path, moa={"layers": 1, "proposers": 0, "aggregation": "synthesize"})
        await started(again)
        await wait_for(lambda: user.finals(topic), what="the resumed answer")
        answer = user.finals(topic)[0]
        assert answer["trace"][-1]["kind"] == "select" and answer["trace"][-1]["answered"] == []
        assert answer["inferences"] == 1 and len(user.finals(topic)) == 1
        await stopped(again)

    run(scenario())


def test_a_score_job_takes_its_turn_between_batch_steps_and_fails_alone():
    engine = SyntheticEngine(service_s=0.3, seed=1, max_batch=4)
    worker = InferenceWorker(engine, max_batch=4)
    done: list[str] = []
    finished = threading.Event()
    outcomes = {}

    def record(name):
        def on_done(outcome):
            outcomes[name] = outcome
            done.append(name)
            if len(done) == 5:
                finished.set()
        return on_done

    request = GenerationRequest(messages=(ChatMessage("user", "hello there"),), max_new_tokens=8)
    messages = (ChatMessage("user", "rate this"),)
    worker.submit(Job(key="g1", request=request, on_done=record("g1")))
    worker.submit(Job(key="g2", request=request, on_done=record("g2")))
    time.sleep(0.05)  # both decode now
    worker.submit(ScoreJob(key="s1", run=lambda e: e.score_labels(messages, ("1", "2")), on_done=record("s1")))
    worker.submit(ScoreJob(key="bad", run=lambda e: 1 / 0, on_done=record("bad")))
    worker.submit(Job(key="g3", request=request, on_done=record("g3")))
    assert finished.wait(10)
    worker.close()
    assert done.index("s1") < done.index("g1") and done.index("bad") < done.index("g1")  # not behind the batch
    assert isinstance(outcomes["bad"], ZeroDivisionError)
    assert all(outcomes[g].text for g in ("g1", "g2", "g3"))
    assert set(outcomes["s1"].logprobs) == {"1", "2"} and outcomes["s1"].prompt_tokens > 0
    assert worker.served_total == 5


def test_a_streamed_select_sends_the_picked_proposal_as_one_chunk(tmp_path):
    async def scenario():
        broker = MemoryBroker()
        agents = mesh(broker, tmp_path)
        await started(*agents)
        user = User(broker)
        topic = user.ask("a", "streamed", stream=True)
        await wait_for(lambda: user.finals(topic), what="answer")
        await asyncio.sleep(0.1)
        chunks = [r for r in user.replies[topic] if r.get("type") == "chunk"]
        (answer,) = user.finals(topic)
        assert [c["delta"] for c in chunks] == [answer["response"]] and answer["trace"][-1]["kind"] == "select"
        await stopped(*agents)

    run(scenario())
