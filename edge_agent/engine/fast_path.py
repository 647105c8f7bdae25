"""The tuned (block-offset) build made safe to load: patch only what loading allocated, then check the logits.

A tuned build's graph is wrong on its own (KL 0.44) until block_offsets.py writes the exact minimums into
onnxruntime's buffers, and where a kernel does not read them (the one-row kernel of x86 CPUs without AVX-512).
So before it loads, the build's kernel probe must come out exact for one row and for several (kernel_probe.py);
after the write, the logits after prefixes of a fixed text (prefilled, the last token decoded) must match the ones
the portable graph (exact on any onnxruntime) gave at build time, to KL < KL_LIMIT (measured: 0.0000x when the
patch applies everywhere; 0.01 where prefill and decode round differently; 0.2-0.4 when the patch is ignored):
otherwise the model is refused with IncompatibleModelError (exit 78).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from ..artifact.manifest import Manifest
from ..artifact.reference import ReferenceLogits, mean_kl
from ..errors import IncompatibleModelError
from .block_offsets import BlockMinimumsPatch
from .kernel_probe import check_kernel
from .kv_cache import RowKvCache
from .machine import differences
from .session import Graph, create_session, runtime_errors

log = logging.getLogger(__name__)
KL_LIMIT = 0.1
_LOADING = threading.Lock()  # one load at a time: a patch must meet its own session's buffers, not another's


def load_session(model_dir: Path, manifest: Manifest, threads: int):
    """The model's session, its block minimums written when the build is tuned (refused where they do not fit)."""
    if not manifest.block_offsets:
        return create_session(model_dir / manifest.graph, threads)
    changed = differences(manifest.onnxruntime, manifest.cpu_features)
    if changed and not manifest.reference_logits:
        raise IncompatibleModelError(
            f"{model_dir} was tuned on another machine ({'; '.join(changed)}) and carries no reference "
            "to check it against: rebuild it here, or with `edge-moa model build --portable`"
        )
    if changed:
        log.warning(
            "%s was tuned on another machine (%s): patching, then checking", model_dir, "; ".join(changed)
        )
    with _LOADING:
        if manifest.kernel_probe:
            check_kernel(model_dir, manifest.kernel_probe)
        else:
            log.warning(
                "%s was built before tuned builds carried a kernel probe: its single-row (decode) kernel is "
                "checked by the logits alone; rebuild it to have it probed",
                model_dir,
            )
        patch = BlockMinimumsPatch(model_dir / manifest.block_offsets)  # notes what memory holds before
        session = create_session(model_dir / manifest.graph, threads)
        patch.apply()  # before anything runs: the graph alone has approximate offsets
    return session


def prefix_logits(graph: Graph, num_kv_heads: int, head_dim: int, ids: np.ndarray, lengths) -> np.ndarray:
    """Logits after the last token of each prefix ids[:L], each prefix run alone from an empty cache: its first
    L-1 tokens as one prefill (many rows a product), the last as a decode step (one row), as the engine runs
    them. Both matter: onnxruntime picks another MatMulNBits kernel for a single row, and on AVX2 that one
    reads the integer zero points and not the patched block constants."""
    rows = []
    with runtime_errors("checking the logits"):
        for length in lengths:
            cache = RowKvCache(graph, num_kv_heads, head_dim, 1)
            cache.reserve(int(length), [0])
            cache.prefill(0, [int(i) for i in ids[: length - 1]], 0)
            rows.append(cache.decode([int(ids[length - 1])], [int(length) - 1])[0].copy())
    return np.stack(rows)


def check_patched(graph: Graph, model_dir: Path, manifest: Manifest) -> float | None:
    """KL of the patched model against the build's reference (None without one); refuses above KL_LIMIT."""
    if not manifest.block_offsets:
        return None
    if not manifest.reference_logits:
        log.warning(
            "%s carries no reference logits: the block minimums are found but not checked; rebuild "
            "it to have them checked",
            model_dir,
        )
        return None
    reference = ReferenceLogits.read(model_dir / manifest.reference_logits)
    ours = prefix_logits(
        graph, manifest.kv.num_kv_heads, manifest.kv.head_dim, reference.ids, reference.lengths
    )
    kl = mean_kl(reference.logits, ours)
    if not kl < KL_LIMIT:
        raise IncompatibleModelError(
            f"{model_dir}: after writing the block minimums the logits differ from the portable graph's "
            f"(KL {kl:.3g} >= {KL_LIMIT}): rebuild it here, or with `edge-moa model build --portable`"
        )
    log.info("block minimums checked: KL %.2g against the portable graph", kl)
    return kl
