"""A tiny random-weight Llama checkpoint (Hugging Face layout), the input that tests hand to the exporters.

The tiny ONNX model (tiny.py) skips the export; this one goes through it: a 2-layer LlamaForCausalLM with
grouped KV heads, tied embeddings and a rotary theta that is not transformers' default (a converter that loses it
gives other logits), saved with tiny.py's tokenizer and ChatML template. Needs torch and transformers (either the
export extra's transformers 5 or the optimum venv's 4.x).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..artifact.chat_template import CHATML_TEMPLATE
from .tiny import EOS_ID, EOS_TOKEN, train_tokenizer

ROPE_THETA = 100000.0  # SmolLM2's; transformers' default is 10000


def build_tiny_checkpoint(out_dir: str | Path, *, seed: int = 0, vocab_size: int = 512) -> Path:
    """Write the checkpoint directory (config.json, model.safetensors, tokenizer files) and return it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(vocab_size)
    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rope_theta=ROPE_THETA,
        tie_word_embeddings=True,
        initializer_range=0.1,  # wider than 0.02: clear argmax margins, so greedy tokens are a fair test
        bos_token_id=None,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).eval().save_pretrained(out)
    tokenizer.save(str(out / "tokenizer.json"))
    tokenizer_config = {
        "eos_token": EOS_TOKEN,
        "bos_token": None,
        "add_bos_token": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 2048,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2), encoding="utf-8")
    (out / "chat_template.jinja").write_text(CHATML_TEMPLATE, encoding="utf-8")
    return out
