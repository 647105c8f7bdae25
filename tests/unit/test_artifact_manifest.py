"""Manifest: KV geometry arithmetic, JSON round trip, and hash checks that catch changed files."""

from pathlib import Path

import pytest

from edge_agent.artifact.manifest import KvGeometry, Manifest, read_manifest, write_manifest
from edge_agent.artifact.verify import check_hashes, sha256_file
from edge_agent.errors import InferenceError


def _manifest() -> Manifest:
    return Manifest(
        name="m",
        source="test",
        precision="int4",
        context_length=8192,
        kv=KvGeometry(num_layers=30, num_kv_heads=3, head_dim=64, dtype="float32"),
        licence="Apache-2.0",
        template_kind="chat",
        chat_template="{{ messages }}",
        eos_token_ids=(2,),
    )


def test_kv_bytes_per_token_smollm2_geometry():
    # SmolLM2-135M: 30 layers, 3 KV heads of 64, fp32 cache -> 30 x 2 x 3 x 64 x 4 bytes.
    assert _manifest().kv_bytes_per_token == 46080
    assert KvGeometry(2, 2, 16, "float16").bytes_per_token == 256


def test_json_round_trip():
    manifest = _manifest()
    assert Manifest.from_json(manifest.to_json()) == manifest


def test_write_then_check_then_tamper(tmp_path: Path):
    (tmp_path / "model.onnx").write_bytes(b"graph")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.bin").write_bytes(b"weights")
    written = write_manifest(tmp_path, _manifest())
    assert written.files == {
        "model.onnx": sha256_file(tmp_path / "model.onnx"),
        "sub/x.bin": sha256_file(tmp_path / "sub" / "x.bin"),
    }
    assert read_manifest(tmp_path) == written
    assert check_hashes(tmp_path, written) == []

    (tmp_path / "model.onnx").write_bytes(b"graph!")
    (tmp_path / "extra.txt").write_text("hi")
    (tmp_path / "sub" / "x.bin").unlink()
    problems = check_hashes(tmp_path, written)
    assert any(p.startswith("model.onnx: sha256") for p in problems)
    assert "sub/x.bin: missing" in problems
    assert "extra.txt: not in the manifest" in problems


def test_missing_manifest_is_a_clear_error(tmp_path: Path):
    with pytest.raises(InferenceError, match="not a built model directory"):
        read_manifest(tmp_path)
