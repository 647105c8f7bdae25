"""Streaming from the real engine: the deltas join to the answer, and streaming changes no token of it."""

import threading
from pathlib import Path

import pytest

from edge_agent.engine.base import ChatMessage, Generation, GenerationRequest
from edge_agent.engine.onnx import OnnxEngine
from edge_agent.engine.worker import InferenceWorker, Job


def greedy(text: str, max_new_tokens: int) -> GenerationRequest:
    return GenerationRequest(
        messages=(ChatMessage("user", text),), max_new_tokens=max_new_tokens, temperature=0
    )


@pytest.mark.parametrize("which", ["tiny_model_dir", "default_model_dir"])
def test_deltas_join_to_the_greedy_text(which: str, request: pytest.FixtureRequest):
    engine = OnnxEngine(request.getfixturevalue(which), threads=2, seed=1)
    for question in ("Name three colours of the rainbow, with a short reason for each.", "hello"):
        plain = engine.generate(greedy(question, 48))
        deltas: list[str] = []
        threads: set[int] = set()

        def on_delta(text: str, deltas: list[str] = deltas, threads: set[int] = threads) -> None:
            deltas.append(text)
            threads.add(threading.get_ident())

        streamed = engine.generate(greedy(question, 48), on_delta=on_delta)
        assert streamed.text == plain.text and streamed.new_tokens == plain.new_tokens
        assert "".join(deltas) == streamed.text
        assert threads == {threading.get_ident()}  # called on the thread that runs the engine
        if plain.new_tokens >= 12:
            assert len(deltas) >= 3  # in pieces, not all at the end
    engine.close()


def test_the_worker_streams_a_job_through_its_own_on_delta(tiny_model_dir: Path):
    engine = OnnxEngine(tiny_model_dir, threads=1, seed=1)
    worker = InferenceWorker(engine, max_batch=1)
    done: list[Generation] = []
    finished = threading.Event()
    deltas: list[str] = []
    worker.submit(
        Job("t1", greedy("stream me", 20), lambda g: (done.append(g), finished.set()), deltas.append)
    )
    assert finished.wait(30)
    worker.close()
    assert isinstance(done[0], Generation) and done[0].new_tokens == 20
    assert "".join(deltas) == done[0].text and len(deltas) >= 2
