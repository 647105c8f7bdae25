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
