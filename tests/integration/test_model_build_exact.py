"""The exact GGUF path through onnxruntime's real MatMulNBits kernel: packed nibbles + block offsets == x @ W."""

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edge_agent.model.gguf_exact import pack_for_matmul_nbits


def test_matmul_nbits_with_block_offsets_matches_dense():
    rng = np.random.default_rng(0)
    n, k = 48, 96
    blocks = k // 32
    q = rng.integers(0, 16, size=(n, blocks, 32)).astype(np.uint8)
    d = rng.uniform(0.01, 0.05, size=(n, blocks)).astype(np.float32)
    m = rng.uniform(-0.4, 0.0, size=(n, blocks)).astype(np.float32)
    dense = (d[..., None] * q + m[..., None]).reshape(n, k)
    inits = [
        numpy_helper.from_array(pack_for_matmul_nbits(q), "B"),
        numpy_helper.from_array(d.reshape(-1), "scales"),
        numpy_helper.from_array(np.ascontiguousarray((m + 8 * d).T), "offsets"),
        numpy_helper.from_array(np.array([0, 0, blocks, 32], np.int64), "block_shape"),
        numpy_helper.from_array(np.array([-1], np.int64), "axes"),
    ]
    nodes = [
        helper.make_node(
            "MatMulNBits",
            ["x", "B", "scales"],
            ["y_nbits"],
            domain="com.microsoft",
            K=k,
            N=n,
            bits=4,
            block_size=32,
            accuracy_level=1,
        ),
        helper.make_node("Reshape", ["x", "block_shape"], ["x_blocks"]),
        helper.make_node("ReduceSum", ["x_blocks", "axes"], ["x_sums"], keepdims=0),
        helper.make_node("MatMul", ["x_sums", "offsets"], ["y_offsets"]),
        helper.make_node("Add", ["y_nbits", "y_offsets"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "exact",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "s", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "s", n])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.normal(size=(1, 5, k)).astype(np.float32)
    (y,) = session.run(None, {"x": x})
    np.testing.assert_allclose(y, x @ dense.T, rtol=1e-4, atol=1e-4)
