"""A token table outside the graph (memory-mapped .npy files, inputs_embeds) runs exactly like the same table
inside it (a Gather in the graph), and a broken table is a clear error."""

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edge_agent.artifact.manifest import EMBEDDING_FILES, read_manifest, write_manifest
from edge_agent.engine.onnx import OnnxEngine
from edge_agent.errors import InferenceError
from edge_agent.model.gguf_exact import take_embeddings_out
from edge_agent.model.tiny import build_tiny_model


def _q8_0(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    blocks = table.reshape(table.shape[0], -1, 32)
    d = (np.abs(blocks).max(axis=-1) / 127).astype(np.float16)
    q = np.rint(blocks / np.maximum(d.astype(np.float32), 1e-8)[..., None]).astype(np.int8)
    return q.reshape(table.shape), d


@pytest.fixture(scope="module")
def inside_and_outside(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny model with a Q8_0 table inside its graph, and a copy with that table outside."""
    root = tmp_path_factory.mktemp("embeddings")
    inside = build_tiny_model(root / "inside", seed=3)
    model = onnx.load(str(inside / "model.onnx"))
    gather = next(n for n in model.graph.node if n.op_type == "Gather" and "input_ids" in n.input)
    init = next(i for i in model.graph.initializer if i.name == gather.input[0])
    q, d = _q8_0(numpy_helper.to_array(init))
    dequantized = (q.reshape(q.shape[0], -1, 32) * d.astype(np.float32)[..., None]).reshape(q.shape)
    init.CopyFrom(numpy_helper.from_array(dequantized.astype(np.float32), init.name))
    onnx.save(model, str(inside / "model.onnx"))
    write_manifest(inside, read_manifest(inside))

    outside = root / "outside"
    shutil.copytree(inside, outside)
    assert take_embeddings_out(model.graph, q, d, outside)
    onnx.save(model, str(outside / "model.onnx"))
    write_manifest(outside, replace(read_manifest(outside), embeddings=EMBEDDING_FILES))
    return inside, outside


def test_outside_table_gives_the_same_logits_and_tokens(inside_and_outside):
    inside, outside = (OnnxEngine(path, threads=1) for path in inside_and_outside)
    assert "input_ids" not in {i.name for i in outside._graph.session.get_inputs()}
    ids = inside.encode("the quick brown fox jumps over the lazy dog")
    np.testing.assert_allclose(outside.next_token_logits(ids), inside.next_token_logits(ids), atol=1e-5)
    assert outside.generate_ids(ids, max_new_tokens=24) == inside.generate_ids(ids, max_new_tokens=24)


def test_batched_decode_reads_the_outside_table_too(inside_and_outside):
    from edge_agent.engine.base import ChatMessage, GenerationRequest

    inside, outside = (OnnxEngine(path, threads=1) for path in inside_and_outside)
    requests = [
        GenerationRequest(messages=(ChatMessage("user", text),), max_new_tokens=12, temperature=0)
        for text in ("red sky at night", "a board on the shelf answers")
    ]
    assert [g.text for g in outside.generate_batch(requests)] == [g.text for g in inside.generate_batch(requests)]


def test_missing_table_is_a_clear_error(inside_and_outside, tmp_path: Path):
    broken = tmp_path / "broken"
    shutil.copytree(inside_and_outside[1], broken)
    (broken / EMBEDDING_FILES[1]).unlink()
    with pytest.raises(InferenceError, match="cannot map the token table"):
        OnnxEngine(broken, threads=1)
