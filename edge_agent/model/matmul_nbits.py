"""One MatMulNBits node as a whole ONNX model: the kernel alone, for the build's kernel probe and the tests."""

from __future__ import annotations

import numpy as np


def matmul_nbits_model(
    k: int, n: int, initializers: dict[str, np.ndarray], *, bits: int = 4, block_size: int = 32, **attributes
) -> bytes:
    """y[1, s, n] = MatMulNBits(x[1, s, k], *initializers) with `bits`-bit blocks and the given attributes."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(value, name) for name, value in initializers.items()]
    node = helper.make_node(
        "MatMulNBits", ["x", *initializers], ["y"], domain="com.microsoft",
        K=k, N=n, bits=bits, block_size=block_size, **attributes,
    )  # fmt: skip
    graph = helper.make_graph(
        [node],
        "matmul_nbits",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "s", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "s", n])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 8
    return model.SerializeToString()
