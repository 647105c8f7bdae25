"""The GGUF path through onnxruntime's real MatMulNBits kernel in its portable form: Q4_1 nibbles and scales copied
as they are, each block's constant riding in the same node as two digit blocks over the input's appended block sums
(gguf_exact.py). The default form (integer zero points + block_offsets.npz) is in test_block_offsets.py.
"""

import numpy as np
import pytest

from edge_agent.artifact.manifest import BLOCK_OFFSETS_FILE, read_manifest
from edge_agent.artifact.store import is_built, model_dir_for
from edge_agent.engine.onnx import OnnxEngine
from edge_agent.errors import InferenceError
from edge_agent.model.gguf_exact import offset_digits, pack_for_matmul_nbits
from tests.integration.onnx_helpers import matmul_nbits_session


def test_q4_1_weights_with_offset_digits_match_the_dense_matmul():
    rng = np.random.default_rng(0)
    n, k = 48, 96
    blocks = k // 32
    q = rng.integers(0, 16, size=(n, blocks, 32)).astype(np.uint8)
    d = rng.uniform(0.01, 0.05, size=(n, blocks)).astype(np.float32)
    m = rng.uniform(-0.4, 0.0, size=(n, blocks)).astype(np.float32)
    dense = (d[..., None] * q + m[..., None]).reshape(n, k)
    digit_q, digit_scales = offset_digits(m + 8 * d)
    packed = np.concatenate([pack_for_matmul_nbits(q), pack_for_matmul_nbits(digit_q)], axis=1)
    scales = np.concatenate([d, digit_scales], axis=1)
    session = matmul_nbits_session(k + 64, n, {"B": packed, "scales": scales.reshape(-1)}, accuracy_level=1)

    x = rng.normal(size=(1, 5, k)).astype(np.float32)
    sums = np.zeros((1, 5, 32), np.float32)
    sums[..., :blocks] = x.reshape(1, 5, blocks, 32).sum(-1)
    (y,) = session.run(None, {"x": np.concatenate([x, sums, sums], axis=-1)})
    exact = x @ dense.T
    # each block constant is held to 1/196 of its row's range: far below one Q4_1 step (d/2 per weight)
    bound = np.abs(m + 8 * d).max() / 196 * np.abs(sums).sum(-1, keepdims=True) + 1e-4
    assert np.all(np.abs(y - exact) <= bound)
    requantized = x @ (np.round(dense / d.repeat(32, axis=1)) * d.repeat(32, axis=1)).T  # a zero point rounded
    assert np.abs(y - exact).max() < np.abs(requantized - exact).max() / 10


@pytest.mark.slow
def test_where_the_kernel_cannot_be_patched_the_build_is_portable(default_model_dir, tmp_path, monkeypatch):
    """Another onnxruntime or CPU family lays MatMulNBits' buffers out otherwise (simulated here: this machine's
    own probe is made to fail): the build falls back to the digit form, exact by itself, without block offsets,
    and gives the same next-token distributions as the default build."""
    from edge_agent.model import build

    def foreign_layout(*args):
        raise InferenceError("of 150 weights' block minimums, 150 not found")

    monkeypatch.setattr(build, "_check_tuned", foreign_layout)
    work = default_model_dir.parent / f".{default_model_dir.name}.work"  # the cached GGUF download
    out = build.build_model("smollm2-135m-instruct", out_dir=tmp_path / "portable", work_dir=work)

    manifest = read_manifest(out)
    assert manifest.block_offsets == "" and not (out / BLOCK_OFFSETS_FILE).exists()
    reference_dir = model_dir_for("smollm2-135m-instruct-fp32")
    if not is_built(reference_dir):
        pytest.skip("fp32 reference not built (make test-models)")
    reference = OnnxEngine(reference_dir, threads=2)
    ids = reference.encode("Small language models answer questions on single-board computers, although slowly.")
    expected = _log_softmax(reference.next_token_logits(ids))
    kl = {}
    for name, path in (("default", default_model_dir), ("portable", out)):
        ours = _log_softmax(OnnxEngine(path, threads=2).next_token_logits(ids))
        kl[name] = float(np.mean(np.sum(np.exp(expected) * (expected - ours), axis=-1)))
    # both exact Q4_1; llama.cpp scores 0.0066 on the bench text, a rounded zero point alone 0.44
    assert kl["portable"] < 0.02 and kl["default"] < 0.02
    assert abs(kl["portable"] - kl["default"]) < 0.005


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize(("kind", "block"), [("Q5_0", 32), ("Q6_K", 16)])
def test_q5_0_and_q6_k_as_8_bit_blocks_give_the_dequantized_matmul(kind: str, block: int):
    """The GGUF's integers shifted into 8-bit MatMulNBits (implicit zero point 128), on the kernel the builder's
    graphs use (accuracy_level 4: int8 activations): what is left is the activations' int8 rounding."""
    from gguf import GGMLQuantizationType, dequantize

    from edge_agent.model.gguf_blocks import unpack_8bit_blocks

    rng = np.random.default_rng(1)
    n, k = 40, 512
    size = {"Q5_0": 22 * k // 32, "Q6_K": 210 * k // 256}[kind]
    raw = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    d_at = {"Q5_0": range(0, size, 22), "Q6_K": range(208, size, 210)}[kind]
    for offset in d_at:  # finite fp16 scales
        raw[:, offset : offset + 2] = rng.uniform(0.001, 0.01, size=(n, 1)).astype(np.float16).view(np.uint8)
    dense = dequantize(raw, getattr(GGMLQuantizationType, kind)).astype(np.float32)
    u, s = unpack_8bit_blocks(kind, raw)
    assert u.shape[2] == block
    x = rng.normal(size=(1, 3, k)).astype(np.float32)
    exact = x @ dense.T
    errors = {}
    for level in (1, 4):
        session = matmul_nbits_session(
            k, n, {"B": u, "scales": s.reshape(-1)}, bits=8, block_size=block, accuracy_level=level
        )
        (y,) = session.run(None, {"x": x})
        errors[level] = np.abs(y - exact).max()
    scale = np.abs(exact).max()
    assert errors[1] < 1e-5 * scale  # fp32 activations: exact up to float summation
    assert errors[4] < 2e-2 * scale  # int8 activations
    rounded = x @ (np.rint(dense / np.abs(dense).max() * 7) * np.abs(dense).max() / 7).T  # a 4-bit re-rounding
    assert errors[4] < np.abs(rounded - exact).max() / 4
