"""One MatMulNBits node as a whole model, run by onnxruntime: the kernel under test without the rest of a graph."""

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def matmul_nbits_session(
    k: int, n: int, initializers: dict[str, np.ndarray], *, bits: int = 4, block_size: int = 32, **attributes
) -> ort.InferenceSession:
    """y[1, s, n] = MatMulNBits(x[1, s, k], *initializers) with `bits`-bit blocks (default 4-bit blocks of 32)
    and the given attributes."""
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
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
