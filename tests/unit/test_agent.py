"""The agent itself on an in-memory broker: one reply per prompt whatever arrives before, beside or after it."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from functools import partial

from edge_agent.agent.journal import Journal
from edge_agent.engine import ChatMessage
from edge_agent.engine.synthetic import SyntheticEngine
from edge_agent.mqtt.memory import MemoryBroker, MemoryTransport
from edge_agent.wire.messages import ResultMessage, Status, TaskAckMessage, UserRequest, encode
from edge_agent.wire.topics import Topics
from tests.unit.agent_harness import ROOT, User, kill, make_agent, started, stopped, wait_for

TOPICS = Topics(ROOT)


def run(coro):
    asyncio.run(asyncio.wait_for(coro, 60))


def test_mesh_answers_once_and_acknowledges_every_message(tmp_path):
    async def scenario():
        broker = MemoryBroker()
        agents = [make_agent(broker, d, tmp_path) for d in ("a", "b", "c")]
        await started(*agents)
        user = User(broker)
        topics = [user.ask("a", f"r{i}") for i in range(10)]
        await wait_for(lambda: all(user.finals(t) for t in topics), what="answers")
        await asyncio.sleep(0.2)
        assert [len(user.finals(t)) for t in topics] == [1] * 10
        answer = user.finals(topics[0])[0]
        assert answer["type"] == "answer" and answer["inferences"] == 4
        assert {e["device"] for e in answer["trace"][0]["answered"]} == {"a", "b", "c"}
        usage, entries = answer["usage"], [e for layer in answer["trace"] for e in layer["answered"]]
        assert usage["completion_tokens"] == answer["trace"][-1]["answered"][0]["new_tokens"] > 0
        assert usage["generated_tokens"] == sum(e["new_tokens"] for e in entries) > usage["completion_tokens"]
        assert usage["prompt_tokens"] == agents[0].engine.count_prompt_tokens(
            (ChatMessage("user", "Why is the sky blue?"),))
        for agent in agents:
            assert broker.unacked(f"edge-moa-agent-{agent.device}") == []
            assert len(agent.admission.ledger) == 0 and agent.admission.ledger.bytes == 0
        await stopped(*agents)

    run(scenario())


def test_forged_status_on_another_devices_topic_is_not_believed(tmp_path):
    async def scenario():
        broker = MemoryBroker()
        agents = [make_agent(broker, d, tmp_path) for d in ("a", "b", "c")]
        await started(*agents)
        user = User(broker)
        forged = Status(device="b", online=False)  # published on c's topic, claiming b is gone
        user.publish(TOPICS.status("c"), encode(forged), retain=True)
        ghost = Status(device="ghost", online=True)  # a ghost on b's topic
        user.publish(TOPICS.status("b"), encode(ghost))
        user.publish(TOPICS.status("ghost2"), b'{"device": "+", "online": true}', retain=True)
        await asyncio.sleep(0.3)
        assert agents[0]._alive() == ["b", "c"]
        topic = user.ask("a", "after-forgery", proposers=2)
        await wait_for(lambda: user.finals(topic), what="answer")
        assert {e["device"] for e in user.finals(topic)[0]["trace"][0]["answered"]} == {"a", "b", "c"}
        await stopped(*agents)

    run(scenario())


def test_repeated_request_id_in_flight_gets_nothing_extra_and_finished_gets_the_stored_answer(tmp_path):
    async def scenario():
        broker = MemoryBroker()
        agents = [make_agent(broker, d, tmp_path) for d in ("a", "b")]
        await started(*agents)
        user = User(broker)
        topic = user.ask("a", "dup", proposers=1)
        user.ask("a", "dup", proposers=1)  # a client retry 0 ms later
        await wait_for(lambda: user.finals(topic), what="answer")
        await asyncio.sleep(0.3)
        assert len(user.finals(topic)) == 1 and "error" not in user.finals(topic)[0]
        served = agents[0].counts["served"]
        user.ask("a", "dup", proposers=1)  # after it finished: the same answer again, not a second execution
        await wait_for(lambda: len(user.finals(topic)) == 2, what="the stored answer")
        first, again = user.finals(topic)
        assert first == again
        assert agents[0].counts["served"] == served and agents[0].counts["answered"] == 1
        await stopped(*agents)

    run(scenario())


def test_an_exception_while_handling_one_prompt_costs_that_prompt_alone(tmp_path):
    async def scenario():
        broker = MemoryBroker()
        agent = make_agent(broker, "a", tmp_path, moa={"layers": 0, "proposers": 0})
        count = agent.engine.count_prompt_tokens

        def explode_on_poison(messages):
            if any("poison" in m.content for m in messages):
                raise RuntimeError("tokenizer exploded")
            return count(messages)

        agent.engine.count_prompt_tokens = explode_on_poison
        await started(agent)
        user = User(broker)
        topics = [user.ask("a", f"p{i}", prompt="poison" if i == 3 else f"question {i}") for i in range(6)]
        await wait_for(lambda: all(user.finals(t) for t in topics), what="replies")
        await asyncio.sleep(0.1)
        replies = [user.finals(t) for t in topics]
        assert all(len(r) == 1 for r in replies)
        assert replies[3][0]["error"]["code"] == "internal"
        assert all("response" in r[0] for i, r in enumerate(replies) if i != 3)
        assert broker.unacked("edge-moa-agent-a") == []
        await stopped(agent)

    run(scenario())


def test_an_exception_completing_one_batched_task_leaks_nothing(tmp_path):
    async def scenario():
        broker = MemoryBroker()
        agent = make_agent(broker, "a", tmp_path, moa={"layers": 0, "proposers": 0}, engine={"max_batch": 4})
        complete = agent._complete

        def fail_one(task, outcome):
            if task.request_id == "b2":
                raise RuntimeError("bug in completing one task")
            complete(task, outcome)

        agent._complete = fail_one
        await started(agent)
        user = User(broker)
        topics = [user.ask("a", f"b{i}") for i in range(6)]
        others = [t for i, t in enumerate(topics) if i != 2]
        await wait_for(lambda: all(user.finals(t) for t in others), what="the other answers")
        assert len(agent.admission.ledger) == 0 and agent.admission.ledger.bytes == 0
        # the request whose completion failed is not silent forever: its own deadline ends it with an error
        agent.runs["b2"].request_deadline = 0.0
        await wait_for(lambda: user.finals(topics[2]), what="the timeout error")
        assert user.finals(topics[2])[0]["error"]["code"] == "timeout"
        await stopped(agent)

    run(scenario())


def test_prompts_held_during_discovery_with_poison_among_them_are_all_answered(tmp_path):
    async def scenario():
        broker = MemoryBroker()
        agent = make_agent(broker, "a", tmp_path, moa={"layers": 0, "proposers": 0})
        user = User(broker)
        user.publish(TOPICS.status("x"), b'{"device": "+", "online": true}', retain=True)
        await agent.start()
        assert agent._discovering
        topics = []
        for i in range(12):
            if i == 5:
                nested = b'{"prompt": ' + b"[" * 5000 + b"]" * 5000 + b', "request_id": "deep"}'
                user.send("a", nested, response_topic="apps/deep")
                topics.append("apps/deep")
            else:
                topics.append(user.ask("a", f"h{i}"))
        await wait_for(lambda: all(user.finals(t) for t in topics), what="every held prompt's reply")
        await asyncio.sleep(0.1)
        assert [len(user.finals(t)) for t in topics] == [1] * 12
        assert user.finals("apps/deep")[0]["error"]["code"] == "invalid_request"
        assert broker.unacked("edge-moa-agent-a") == []
        await stopped(agent)

    run(scenario())


def test_wire_numbers_must_be_finite_and_results_only_from_the_peer_asked(tmp_path):
    async def scenario():
        broker = MemoryBroker()
        agents = [make_agent(broker, d, tmp_path, engine={"synthetic_service_s": 0.3}) for d in ("a", "b", "c")]
        await started(*agents)
        user = User(broker)
        topic = user.ask("a", "trust", proposers=2)
        await wait_for(lambda: "trust" in agents[0].runs and agents[0].runs["trust"].slots, what="the run")
        slot = next(s for s in agents[0].runs["trust"].slots if s.device != "a")
        other = "b" if slot.device == "c" else "c"
        forged = ResultMessage(sender=other, request_id="trust", layer=1, task_id=slot.task_id, text="FORGED",
                               inference_s=0.1)
        user.publish(TOPICS.inbox("a", other), encode(forged))
        nan_ack = json.loads(encode(TaskAckMessage(sender=slot.device, request_id="trust", layer=1,
                                                   task_id=slot.task_id, accepted=True)))
        user.publish(TOPICS.inbox("a", slot.device), json.dumps({**nan_ack, "eta_s": float("nan")}).encode())
        await wait_for(lambda: user.finals(topic), what="answer")
        answer = user.finals(topic)[0]
        assert "FORGED" not in json.dumps(answer)
        assert {e["device"] for e in answer["trace"][0]["answered"]} == {"a", "b", "c"}
        await stopped(*agents)

    run(scenario())


def test_kill_and_restart_resumes_the_journaled_prompt_with_its_own_deadline(tmp_path):
    async def scenario():
        broker = MemoryBroker()
        slow = make_agent(broker, "a", tmp_path, moa={"layers": 0, "proposers": 0},
                          engine={"synthetic_service_s": 5.0})
        await started(slow)
        user = User(broker)
        topic = user.ask("a", "survivor")
        late = user.ask("a", "expired")
        await wait_for(lambda: slow.journal.in_progress("survivor") and slow.journal.in_progress("expired"))
        kill(slow)  # no reply was sent, both prompts are in the journal
        db = sqlite3.connect(tmp_path / "a.journal.sqlite")
        row = db.execute("SELECT request FROM prompts WHERE request_id = 'expired'").fetchone()[0]
        expired = UserRequest.model_validate_json(row).model_copy(update={"deadline_at": 1.0})
        db.execute("UPDATE prompts SET request = ? WHERE request_id = 'expired'", (expired.model_dump_json(),))
        db.commit()
        db.close()
        again = make_agent(broker, "a", tmp_path, moa={"layers": 0, "proposers": 0})
        await started(again)
        await wait_for(lambda: user.finals(topic) and user.finals(late), what="both replies")
        assert "response" in user.finals(topic)[0]
        assert user.finals(late)[0]["error"]["code"] == "timeout"
        assert len(user.finals(topic)) == len(user.finals(late)) == 1
        await stopped(again)

    run(scenario())


def test_unacknowledged_reply_is_sent_again_after_a_restart_and_old_rows_are_answered(tmp_path):
    journal = Journal(tmp_path / "a.journal.sqlite")
    journal.finish("gone", "apps/gone", None, b'{"request_id": "gone", "device": "a", "response": "kept"}')
    journal.close()
    db = sqlite3.connect(tmp_path / "a.journal.sqlite")  # a row an older version wrote, unreadable now
    db.execute("INSERT INTO prompts (request_id, request) VALUES ('old', ?)",
               (json.dumps({"request_id": "old", "reply_topic": "apps/old", "prompt": 3}),))
    db.commit()
    db.close()

    async def scenario():
        broker = MemoryBroker()
        user = User(broker)
        agent = make_agent(broker, "a", tmp_path, moa={"layers": 0, "proposers": 0})
        await started(agent)
        await wait_for(lambda: user.finals("apps/gone") and user.finals("apps/old"), what="both replies")
        assert user.finals("apps/gone")[0]["response"] == "kept"
        assert user.finals("apps/old")[0]["error"]["code"] == "internal"
        await wait_for(lambda: agent.journal.unsent() == [], what="the broker's acknowledgements marked")
        await stopped(agent)

    run(scenario())


class HangingEngine(SyntheticEngine):
    """One engine call that does not return for its whole service time (a hung runtime, not a long batch)."""

    open_batch = None  # no steps: the worker serves it whole


def test_hung_engine_makes_the_agent_unhealthy_and_refuse(tmp_path):
    async def scenario():
        broker = MemoryBroker()
        agent = make_agent(broker, "a", tmp_path, engine_class=HangingEngine, moa={"layers": 0, "proposers": 0},
                           engine={"synthetic_service_s": 3.0, "hang_timeout_s": 0.3})
        await started(agent)
        user = User(broker)
        first = user.ask("a", "stuck")
        await wait_for(lambda: not agent._healthy(), what="unhealthy")
        second = user.ask("a", "refused")
        await wait_for(lambda: user.finals(second), what="the refusal")
        assert user.finals(second)[0]["error"]["code"] == "unavailable"
        assert agent.status().healthy is False
        # the stuck request's own deadline (from the hang timeout) ends it with one error; the late result adds none
        await wait_for(lambda: user.finals(first), what="the stuck request's error")
        assert user.finals(first)[0]["error"]["code"] == "timeout"
        await wait_for(lambda: agent._healthy(), what="the engine to come back")
        await asyncio.sleep(0.1)
        assert len(user.finals(first)) == 1 and len(agent.admission.ledger) == 0
        await stopped(agent)

    run(scenario())


def test_streamed_final_aggregation_comes_in_chunks_then_the_one_answer(tmp_path):
    async def scenario():
        broker = MemoryBroker()
        agents = [make_agent(broker, d, tmp_path, moa={"max_new_tokens": 40}) for d in ("a", "b", "c")]
        await started(*agents)
        user = User(broker)
        prompt = " ".join(f"word{i}" for i in range(30))
        topic = user.ask("a", "streamed", prompt=prompt, stream=True)
        plain = user.ask("a", "plain", prompt=prompt)
        await wait_for(lambda: user.finals(topic) and user.finals(plain), what="answers")
        replies = user.replies[topic]
        chunks = [r for r in replies if r.get("type") == "chunk"]
        assert len(chunks) >= 2 and replies[-1]["type"] == "answer"  # chunks first, the answer last
        assert [c["index"] for c in chunks] == list(range(len(chunks)))
        assert "".join(c["delta"] for c in chunks) == replies[-1]["response"]
        assert all(r.get("type") != "chunk" for r in user.replies[plain])  # without stream nothing changes
        await stopped(*agents)

    run(scenario())


def test_a_prompt_is_tokenized_once_off_the_loop_and_the_engine_reads_the_ids(tmp_path):
    import threading

    async def scenario():
        broker = MemoryBroker()
        agent = make_agent(broker, "a", tmp_path, moa={"layers": 0, "proposers": 0})
        calls, threads, seen = [], set(), []
        original = agent.engine.prompt_ids

        def counting(messages):
            calls.append(messages)
            threads.add(threading.current_thread().name)
            return original(messages)

        agent.engine.prompt_ids = counting
        submit = agent.worker.submit
        agent.worker.submit = lambda job: (seen.append(job.request.prompt_ids), submit(job))[1]
        await started(agent)
        user = User(broker)
        topic = user.ask("a", "once", prompt="how many times?")
        await wait_for(lambda: user.finals(topic), what="answer")
        assert len(calls) == 1 and all(name.startswith("tokenize") for name in threads)
        assert seen == [tuple(original(calls[0]))]
        await stopped(agent)

    run(scenario())


def test_stop_while_the_broker_is_unreachable_ends_the_agent(tmp_path):
    """SIGTERM during start-up retries (broker down) must end the agent at once, not after a broker comes back:
    a chaos test's restarted agent once outlived its mesh this way."""
    from edge_agent.errors import TransportError

    class Unreachable(MemoryTransport):
        attempts = 0

        def connect(self) -> None:
            Unreachable.attempts += 1
            raise TransportError("cannot reach broker: connection refused")

    async def scenario():
        agent = make_agent(MemoryBroker(), "a", tmp_path)
        agent._transport_factory = partial(Unreachable, MemoryBroker())
        running = asyncio.create_task(agent.run())
        await wait_for(lambda: Unreachable.attempts >= 2, what="two connection attempts")
        agent.stop()
        await asyncio.wait_for(running, 2.0)  # the retry delay is 1 s by now, 10 s later: not waited for
        assert agent.worker._closed and Unreachable.attempts >= 2

    run(scenario())


def test_a_cold_peers_first_long_task_is_waited_for(tmp_path):
    """Before its first inference an agent does not know its speed: the deadline it gives a requester must not
    be a guess of 1 s a task (queue 2 x 1 s x 1.5 + 0.2 s of grace: a 3.5 s first answer was dropped)."""
    async def scenario():
        broker = MemoryBroker()
        agents = [make_agent(broker, d, tmp_path, engine={"synthetic_service_s": 3.5}, moa={"task_grace_s": 0.2})
                  for d in ("a", "b")]
        await started(*agents)
        user = User(broker)
        topic = user.ask("a", "cold", proposers=1)
        await wait_for(lambda: user.finals(topic), timeout_s=30, what="answer")
        answer = user.finals(topic)[0]
        assert "error" not in answer, answer
        layer1 = answer["trace"][0]
        assert sorted(e["device"] for e in layer1["answered"]) == ["a", "b"] and layer1["dropped"] == []
        await stopped(*agents)

    run(scenario())
