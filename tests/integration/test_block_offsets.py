"""Exact Q4_1 minimums written into onnxruntime's real prepacked MatMulNBits weights (engine/block_offsets.py),
and file pages given back after loading (engine/process_memory.py)."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edge_agent.artifact.block_offsets import write_block_offsets
from edge_agent.engine.block_offsets import BlockMinimumsPatch
from edge_agent.engine.kernel_probe import int8_rounding_bound
from edge_agent.engine.process_memory import release_file_pages
from edge_agent.errors import IncompatibleModelError
from edge_agent.model.gguf_exact import pack_for_matmul_nbits, pack_zero_points
from tests.integration.onnx_helpers import matmul_nbits_session


def _q4_1(rng: np.random.Generator, n: int, k: int):
    """Random Q4_1 weights as a GGUF holds them: d and m are float16 values."""
    blocks = k // 32
    q = rng.integers(0, 16, size=(n, blocks, 32)).astype(np.uint8)
    d = rng.uniform(0.01, 0.05, size=(n, blocks)).astype(np.float16)
    m = rng.uniform(-0.4, 0.0, size=(n, blocks)).astype(np.float16)
    z = np.clip(np.rint(-m.astype(np.float32) / d.astype(np.float32)), 0, 15).astype(np.uint8)
    dense = (d.astype(np.float32)[..., None] * q + m.astype(np.float32)[..., None]).reshape(n, k)
    return q, d, m, z, dense


def _session(q, d, z, n: int, k: int) -> ort.InferenceSession:
    """One MatMulNBits with integer zero points on the fast int8-activation kernel (accuracy_level 4)."""
    initializers = {
        "B": pack_for_matmul_nbits(q),
        "scales": d.astype(np.float32).reshape(-1),
        "zero_points": pack_zero_points(z),
    }
    return matmul_nbits_session(k, n, initializers, accuracy_level=4)


@pytest.mark.parametrize("n", [48, 40])  # 40: the kernel pads rows to groups of 16
def test_patched_kernel_computes_q4_1_exactly(tmp_path: Path, n: int):
    rng = np.random.default_rng(n)
    k = 128
    q, d, m, z, dense = _q4_1(rng, n, k)
    write_block_offsets(tmp_path / "offsets.npz", [(d, z, m)])
    unpatched = _session(q, d, z, n, k)  # loaded before the patch is made: not a candidate
    patch = BlockMinimumsPatch(tmp_path / "offsets.npz")
    session = _session(q, d, z, n, k)
    x = rng.normal(size=(1, 3, k)).astype(np.float32)
    exact = x @ dense.T

    assert patch.apply() == 1
    (patched,) = session.run(None, {"x": x})
    (rounded,) = unpatched.run(None, {"x": x})

    bound = int8_rounding_bound(x, dense)
    assert np.all(np.abs(patched - exact) <= bound)
    assert np.abs(patched - exact).max() < np.abs(rounded - exact).max() / 10  # the integer zero points alone


def test_patched_kernel_computes_q4_k_exactly(tmp_path: Path):
    """Q4_K's sub-block scales d*sc and minimums -dmin*mn are float32 values (not float16 as Q4_1's), and -m/d
    often rounds past 15: the offsets keep them in float32 and the patch still finds and fixes every block."""
    from gguf import GGMLQuantizationType, dequantize

    from edge_agent.model.gguf_blocks import unpack_blocks

    rng = np.random.default_rng(5)
    n, k = 48, 512
    raw = rng.integers(0, 256, size=(n, k // 256, 144), dtype=np.uint8)
    raw[..., 0:4] = rng.uniform(0.0005, 0.002, size=(n, k // 256, 2)).astype(np.float16).view(np.uint8)
    raw = raw.reshape(n, -1)
    q, d, m = unpack_blocks("Q4_K", raw)
    dense = dequantize(raw, GGMLQuantizationType.Q4_K).astype(np.float32)
    z = np.clip(np.rint(-m / np.where(d == 0, 1, d)), 0, 15).astype(np.uint8)
    assert d.dtype == np.float32 and not np.array_equal(d.astype(np.float16).astype(np.float32), d)
    write_block_offsets(tmp_path / "offsets.npz", [(d, z, m)])
    patch = BlockMinimumsPatch(tmp_path / "offsets.npz")
    session = _session(q, d, z, n, k)
    x = rng.normal(size=(1, 3, k)).astype(np.float32)
    exact = x @ dense.T

    assert patch.apply() == 1
    (patched,) = session.run(None, {"x": x})

    bound = int8_rounding_bound(x, dense)
    assert np.all(np.abs(patched - exact) <= bound)


def test_offsets_that_do_not_match_the_kernel_are_refused(tmp_path: Path):
    rng = np.random.default_rng(1)
    n, k = 32, 64
    q, d, m, z, _ = _q4_1(rng, n, k)
    wrong_z = np.where(z < 15, z + 1, z - 1).astype(np.uint8)  # what another kernel's layout would look like
    write_block_offsets(tmp_path / "offsets.npz", [(d, wrong_z, m)])
    patch = BlockMinimumsPatch(tmp_path / "offsets.npz")
    session = _session(q, d, z, n, k)
    x = rng.normal(size=(1, 2, k)).astype(np.float32)
    (before,) = session.run(None, {"x": x})

    with pytest.raises(IncompatibleModelError, match="of 1 weights' block minimums, 1 not found.*--portable"):
        patch.apply()
    assert np.array_equal(session.run(None, {"x": x})[0], before)  # nothing was written


def test_a_weight_found_twice_is_refused_and_nothing_is_written(tmp_path: Path):
    rng = np.random.default_rng(2)
    n, k = 32, 64
    q, d, m, z, _ = _q4_1(rng, n, k)
    write_block_offsets(tmp_path / "offsets.npz", [(d, z, m)])
    patch = BlockMinimumsPatch(tmp_path / "offsets.npz")
    first, second = (
        _session(q, d, z, n, k),
        _session(q, d, z, n, k),
    )  # two copies appeared: which one is ours?
    x = rng.normal(size=(1, 2, k)).astype(np.float32)
    (before,) = first.run(None, {"x": x})

    with pytest.raises(IncompatibleModelError, match="0 not found, 1 found more than once"):
        patch.apply()
    assert np.array_equal(first.run(None, {"x": x})[0], before)
    assert np.array_equal(second.run(None, {"x": x})[0], before)


def test_a_copy_that_was_there_before_is_not_patched(tmp_path: Path):
    rng = np.random.default_rng(3)
    n, k = 32, 64
    q, d, m, z, _ = _q4_1(rng, n, k)
    write_block_offsets(tmp_path / "offsets.npz", [(d, z, m)])
    session = _session(q, d, z, n, k)  # e.g. another engine's unpatched session, or freed memory
    patch = BlockMinimumsPatch(tmp_path / "offsets.npz")
    with pytest.raises(IncompatibleModelError, match="1 not found"):
        patch.apply()
    assert session.get_inputs()[0].name == "x"  # it stayed alive through the patch


def test_release_file_pages_gives_back_a_mapped_file_and_reads_stay_the_same(tmp_path: Path):
    values = np.arange(4 << 20, dtype=np.int32)  # 16 MB
    np.save(tmp_path / "table.npy", values)
    mapped = np.load(tmp_path / "table.npy", mmap_mode="r")
    assert int(mapped.sum(dtype=np.int64)) == int(values.sum(dtype=np.int64))  # every page read

    assert release_file_pages(tmp_path) >= values.nbytes
    assert release_file_pages(tmp_path / "elsewhere") == 0
    assert np.array_equal(mapped, values)
