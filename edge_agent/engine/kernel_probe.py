"""Whether this machine's 4-bit kernels take the patched block minimums, for one row as well as for several.

onnxruntime picks its MatMulNBits kernel by CPU and by the number of rows. On x86 CPUs without AVX-512 the
one-row CompInt8 kernel (onnxruntime 1.32's AVX2 dispatch: `SQ4BitGemmKernel_BlkSum_CompInt8_avx2` branches to
`MlasQ4Int8GemmM1KernelBlkLen32Avx2<HasZeroPoint>` when CountM == 1) applies the integer zero points itself and
never reads BlkSum: a tuned build there prefills exactly but decodes with rounded zero points (measured on an
AMD EPYC with AVX2 only: KL 0.22 and 0.43 on SmolLM2 and Gemma against the portable graph; one-row error 20-34 %
of the product's range, several rows 0.5 %). So before a tuned model loads, its build's probe (model/
kernel_probe.py) is patched as the model will be and run for 1 and 3 rows; each product must be the exact Q4_1
one within what the kernel's int8 activations may lose, or the model is refused (IncompatibleModelError).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import IncompatibleModelError
from .block_offsets import BlockMinimumsPatch
from .session import create_session, ort_version, runtime_errors

log = logging.getLogger(__name__)
PROBE_ROWS = (1, 3)  # a decode step's product, and a prefill's


def int8_rounding_bound(x: np.ndarray, dense: np.ndarray) -> np.ndarray:
    """What an exact product x[1, rows, K] @ dense[N, K].T may still miss on the int8-activation kernel: half a
    step of max|x|/127 per block of 32, times the block's absolute weights."""
    rows, n = x.shape[1], dense.shape[0]
    step = np.abs(x.reshape(1, rows, -1, 32)).max(-1) / 127 / 2
    return (step[..., None, :] * np.abs(dense.reshape(n, -1, 32)).sum(-1)).sum(-1) + 1e-4


def check_kernel(model_dir: Path, files: tuple[str, ...]) -> None:
    """Patch and run the probe `files` (graph, weights) of model_dir; IncompatibleModelError unless exact."""
    graph, weights = files
    with np.load(model_dir / weights) as data:
        q, d, m = data["q"], data["0.d"].astype(np.float32), data["0.m"].astype(np.float32)
    rows, blocks, _ = q.shape
    dense = (d[..., None] * q + m[..., None]).reshape(rows, blocks * 32)
    patch = BlockMinimumsPatch(model_dir / weights)
    session = create_session(model_dir / graph, threads=1)
    patch.apply()
    rng = np.random.default_rng(0)
    with runtime_errors("running the kernel probe"):
        for count in PROBE_ROWS:
            x = rng.normal(size=(1, count, dense.shape[1])).astype(np.float32)
            (got,) = session.run(None, {"x": x})
            exact = x @ dense.T
            if not np.all(np.abs(got - exact) <= int8_rounding_bound(x, dense)):
                error = float(np.abs(got - exact).max() / np.abs(exact).max())
                raise IncompatibleModelError(
                    f"{model_dir}: onnxruntime {ort_version()}'s 4-bit kernel for {count} row(s) does not take "
                    f"the exact block minimums on this CPU (error {error:.1%} of the product's range; x86 "
                    "without AVX-512 decodes with the rounded zero points); a model for this machine is a "
                    "portable build (`edge-moa model build --portable`, which a build here falls back to)"
                )
    log.info("kernel probe: the block minimums reach the 4-bit kernel for %s rows", PROBE_ROWS)
