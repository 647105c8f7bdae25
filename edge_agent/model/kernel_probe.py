"""The kernel probe a tuned build carries: one MatMulNBits node of random Q4_1 weights with integer zero points,
in the form and on the kernel (4-bit blocks of 32, accuracy_level 4) of the model's own weights, and their exact
minimums. The engine patches and runs it before the model (engine/kernel_probe.py); written with onnx, which
only the build has."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..artifact.block_offsets import write_block_offsets
from ..artifact.manifest import KERNEL_PROBE_FILES
from .gguf_exact import pack_for_matmul_nbits, pack_zero_points
from .matmul_nbits import matmul_nbits_model
from .quantize import ACCURACY_LEVEL

ROWS, COLUMNS = 48, 256  # a few kilobytes; 48 outputs: three of the kernel's groups of 16


def write_kernel_probe(model_dir: Path, seed: int = 7) -> tuple[str, ...]:
    """Write the probe's graph and weights (q, and d, z, m as block_offsets.npz holds them) into model_dir."""
    rng = np.random.default_rng(seed)
    blocks = COLUMNS // 32
    q = rng.integers(0, 16, size=(ROWS, blocks, 32)).astype(np.uint8)
    d = rng.uniform(0.01, 0.05, size=(ROWS, blocks)).astype(np.float16)
    m = rng.uniform(-0.4, 0.0, size=(ROWS, blocks)).astype(np.float16)
    z = np.clip(np.rint(-m.astype(np.float32) / d.astype(np.float32)), 0, 15).astype(np.uint8)
    graph, weights = KERNEL_PROBE_FILES
    initializers = {
        "B": pack_for_matmul_nbits(q),
        "scales": d.astype(np.float32).reshape(-1),
        "zero_points": pack_zero_points(z),
    }
    (model_dir / graph).write_bytes(
        matmul_nbits_model(COLUMNS, ROWS, initializers, accuracy_level=ACCURACY_LEVEL)
    )
    write_block_offsets(model_dir / weights, [(d, z, m)], q=q)
    return KERNEL_PROBE_FILES
