"""One MatMulNBits node as a whole model, run by onnxruntime: the kernel under test without the rest of a graph."""

import numpy as np
import onnxruntime as ort

from edge_agent.model.matmul_nbits import matmul_nbits_model


def matmul_nbits_session(
    k: int, n: int, initializers: dict[str, np.ndarray], *, bits: int = 4, block_size: int = 32, **attributes
) -> ort.InferenceSession:
    """y[1, s, n] = MatMulNBits(x[1, s, k], *initializers) with `bits`-bit blocks (default 4-bit blocks of 32)
    and the given attributes."""
    model = matmul_nbits_model(k, n, initializers, bits=bits, block_size=block_size, **attributes)
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])
