"""The GGUF path through onnxruntime's real MatMulNBits kernel: Q4_1 nibbles and scales copied as they are, each
block's constant riding in the same node as two digit blocks over the input's appended block sums (gguf_exact.py).
"""

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edge_agent.model.gguf_exact import offset_digits, pack_for_matmul_nbits


def _matmul_nbits(k_total: int, n: int, packed: np.ndarray, scales: np.ndarray) -> ort.InferenceSession:
    inits = [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scales.reshape(-1), "scales")]
    node = helper.make_node(
        "MatMulNBits", ["x", "B", "scales"], ["y"], domain="com.microsoft",
        K=k_total, N=n, bits=4, block_size=32, accuracy_level=1,
    )  # fmt: skip
    graph = helper.make_graph(
        [node],
        "exact",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "s", k_total])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "s", n])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 8
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


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
    session = _matmul_nbits(k + 64, n, packed, scales)

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
