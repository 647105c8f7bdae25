"""TextStream: streamed deltas join to the final answer, never split a character, never show a stop string."""

from edge_agent.engine import generation
from edge_agent.engine.generation import TextStream, final_text


def utf8(ids: list[int]) -> str:
    """A byte-level decoder (ids are bytes), as the byte-level BPE tokenizers decode: unfinished bytes -> U+FFFD."""
    return bytes(ids).decode("utf-8", errors="replace")


def stream_all(ids: list[int], stops: tuple[str, ...] = ()) -> tuple[list[str], str]:
    deltas: list[str] = []
    stream = TextStream(utf8, stops, deltas.append)
    for end in range(1, len(ids) + 1):
        stream.push(ids[:end])
    text = final_text(utf8(ids), stops)
    stream.finish(text)
    return deltas, text


def test_deltas_join_to_the_text_and_never_split_a_character(monkeypatch):
    monkeypatch.setattr(generation, "STREAM_EVERY_TOKENS", 1)  # a delta after every byte: the worst case
    ids = list("héllo wörld, 東京 🙂 end".encode())
    deltas, text = stream_all(ids)
    assert "".join(deltas) == text == "héllo wörld, 東京 🙂 end"
    assert all("\ufffd" not in d for d in deltas)
    assert len(deltas) > 10  # it did stream, piece by piece


def test_every_four_tokens_by_default():
    ids = list(b"abcdefghijklmnopqrstuvwxyz")
    deltas, text = stream_all(ids)
    assert "".join(deltas) == text
    assert [len(d) for d in deltas[:-1]] == [4] * 6 and deltas[-1] == "yz"


def test_a_stop_string_is_never_streamed(monkeypatch):
    monkeypatch.setattr(generation, "STREAM_EVERY_TOKENS", 1)
    ids = list(b"The answer is 4.\nQuestion: what next?")
    deltas, text = stream_all(ids, ("\nQuestion:",))
    assert text == "The answer is 4."
    assert "".join(deltas) == text
    # a tail that only looked like the start of a stop string is sent once it is clearly not one
    deltas, text = stream_all(list(b"a\nQuest for more"), ("\nQuestion:",))
    assert "".join(deltas) == text == "a\nQuest for more"
