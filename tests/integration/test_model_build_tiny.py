"""The tiny test model builds in well under a second, reproducibly, and verifies against its manifest."""

import time
from pathlib import Path

from edge_agent.artifact.manifest import read_manifest
from edge_agent.artifact.verify import check_hashes
from edge_agent.model.tiny import build_tiny_model


def test_builds_fast_and_reproducibly(tmp_path: Path):
    started = time.perf_counter()
    a = build_tiny_model(tmp_path / "a", seed=5)
    assert time.perf_counter() - started < 5
    b = build_tiny_model(tmp_path / "b", seed=5)
    c = build_tiny_model(tmp_path / "c", seed=6)
    manifest_a, manifest_b, manifest_c = read_manifest(a), read_manifest(b), read_manifest(c)
    assert set(manifest_a.files) == {
        "model.onnx",
        "tokenizer.json",
        "tokenizer_config.json",
        "genai_config.json",
    }
    assert manifest_a.files == manifest_b.files
    assert manifest_a.files["model.onnx"] != manifest_c.files["model.onnx"]
    assert manifest_a.files["tokenizer.json"] == manifest_c.files["tokenizer.json"]
    assert check_hashes(a, manifest_a) == []
