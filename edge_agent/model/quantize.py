"""Weight-only quantization of an exported fp32 graph into MatMulNBits (onnxruntime's own quantizer).

What the genai builder does inside its export, for graphs it did not make (optimum's): every MatMul with a
constant weight becomes a 4- or 8-bit MatMulNBits in blocks of 32 with int8 activations (accuracy_level 4),
the settings of the builder's int4 build (DESIGN.md sec. 6). Runs where `onnx` is installed (the optimum venv).
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

BITS = {"int4": 4, "int8": 8}
BLOCK_SIZE = 32
ACCURACY_LEVEL = 4
_TWO_GB = (
    2**31 - 2**26
)  # protobuf's limit, less some room: bigger graphs keep their weights in model.onnx.data


def quantize_graph(source: Path, target: Path, precision: str) -> int:
    """Write `source` quantized to `precision` as `target`; returns how many MatMuls were quantized."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(source))
    before = sum(node.op_type == "MatMul" for node in model.graph.node)
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=BITS[precision],
        block_size=BLOCK_SIZE,
        is_symmetric=False,
        accuracy_level=ACCURACY_LEVEL,
    )
    quantizer.process()
    quantized = quantizer.model.model
    count = before - sum(node.op_type == "MatMul" for node in quantized.graph.node)
    save_graph(quantized, target)
    log.info("quantized %d MatMul weights to %s (blocks of %d)", count, precision, BLOCK_SIZE)
    return count


def save_graph(model, target: Path) -> None:
    """One file when it fits protobuf's 2 GB, else the weights in `model.onnx.data` beside it (the builder's name)."""
    import onnx

    large = model.ByteSize() > _TWO_GB
    onnx.save_model(
        model,
        str(target),
        save_as_external_data=large,
        all_tensors_to_one_file=True,
        location=f"{target.name}.data" if large else None,
    )
