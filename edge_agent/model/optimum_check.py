"""An optimum graph checked by the engine's own loop against the checkpoint's logits, before it is kept.

Each prefix of the fixed text runs as the engine runs a request: all but its last token from an empty cache,
then the last one as a decode step fed the present as past (engine/kv_cache.py `ConcatKvCache`); the logits must
match PyTorch's on the checkpoint (optimum_export.py wrote them). An fp32 graph must agree to float rounding
(KL < FP32_KL_LIMIT); a quantized one is refused only when broken (QUANTIZED_KL_LIMIT) and its KL is recorded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..artifact.manifest import KvGeometry
from ..artifact.reference import ReferenceLogits, mean_kl
from ..errors import InferenceError, ModelBuildError
from .decoder_io import decoder_io_problems

FP32_KL_LIMIT = 1e-4
QUANTIZED_KL_LIMIT = 1.0  # nats: a quantized graph this far from its checkpoint is broken, not merely coarse


def checkpoint_geometry(config_path: Path) -> tuple[KvGeometry, int]:
    """KV geometry and context length from a Hugging Face config.json (its `text_config` when nested)."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config = config.get("text_config", config)
    heads = config["num_attention_heads"]
    kv = KvGeometry(
        num_layers=config["num_hidden_layers"],
        num_kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=config.get("head_dim") or config["hidden_size"] // heads,
        dtype="float32",
    )
    return kv, int(config["max_position_embeddings"])


def check_against_checkpoint(
    graph_path: Path, reference_path: Path, kv: KvGeometry, *, quantized: bool
) -> float:
    """KL of the graph's next-token distributions from the checkpoint's; ModelBuildError when over the limit or
    when the engine cannot run the graph."""
    from ..engine.kv_cache import ConcatKvCache
    from ..engine.session import Graph, create_session, runtime_errors

    try:
        session = create_session(graph_path, threads=0)
        inputs = {i.name: i.shape for i in session.get_inputs()}
        outputs = {o.name: o.shape for o in session.get_outputs()}
        problems = decoder_io_problems(inputs, outputs, kv)
        if problems:
            raise ModelBuildError("the exported graph is not one the engine runs: " + "; ".join(problems))
        graph = Graph(session, kv.num_layers)
        reference = ReferenceLogits.read(reference_path)
        rows = []
        with runtime_errors("running the exported graph"):
            for length in reference.lengths:
                ids = [int(i) for i in reference.ids[:length]]
                cache = ConcatKvCache(graph, kv.num_kv_heads, kv.head_dim)
                cache.run(ids[:-1], 0)
                rows.append(cache.run(ids[-1:], len(ids) - 1).copy())
    except InferenceError as exc:
        raise ModelBuildError(f"the exported graph does not run: {exc}") from exc
    kl = mean_kl(reference.logits, np.stack(rows))
    limit = QUANTIZED_KL_LIMIT if quantized else FP32_KL_LIMIT
    if not kl < limit:
        raise ModelBuildError(
            f"the exported graph's logits differ from the checkpoint's (KL {kl:.3g} >= {limit})"
        )
    return kl
