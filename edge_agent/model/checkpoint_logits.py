"""A checkpoint's own logits (PyTorch, fp32) after prefixes of the fixed text: what an exported graph must give.

Written by whichever transformers is at hand: the build's own (5.x) when the main venv has the export extra, so a
config the optimum venv's transformers 4 reads otherwise (legacy_config.py) shows as a difference; else the
optimum venv's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..artifact.reference import ReferenceLogits

PREFIXES = (8, 16, 24, 32)


def have_torch() -> bool:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def write_checkpoint_logits(checkpoint: Path, path: Path) -> str:
    """One forward pass over the fixed text (causal: each position sees only its prefix); returns the
    transformers version that read the checkpoint."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32, local_files_only=True)
    model.eval()
    ids = ReferenceLogits.fixed_ids(int(model.config.get_text_config().vocab_size), tokens=PREFIXES[-1])
    with torch.no_grad():
        logits = model(torch.from_numpy(ids)[None, :]).logits[0].float().numpy()
    lengths = np.asarray(PREFIXES, dtype=np.int64)
    ReferenceLogits(ids, lengths, logits[lengths - 1]).write(path)
    return transformers.__version__
