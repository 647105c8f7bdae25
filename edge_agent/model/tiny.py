"""A tiny random-weight Llama-like model, built in well under a second, for tests that need a real engine.

The graph has the shape and the I/O names of what onnxruntime-genai's builder exports for Llama-family models
(GroupQueryAttention with rotary embedding and a past/present KV cache that may share one buffer, RMS norms,
SiLU MLP), so the engine runs the same code path on it as on the default model. The tokenizer is a real byte-level
BPE trained in-process, the chat template is ChatML with <|im_end|> as EOS, as SmolLM2's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..artifact.chat_template import CHATML_TEMPLATE
from ..artifact.manifest import KvGeometry, Manifest, write_manifest
from ..config import SYNTHESIS_SYSTEM_PROMPT

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2 as in SmolLM2
EOS_TOKEN = "<|im_end|>"
EOS_ID = 2

@dataclass(frozen=True)
class _Shape:
    """The tiny model's geometry: what the graph and genai_config.json are both written from."""

    vocab: int
    hidden: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate: int
    context_length: int


_CORPUS = [
    SYNTHESIS_SYSTEM_PROMPT,
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    "The quick brown fox jumps over the lazy dog. What is the capital of France? Paris is the capital of France.",
    "Explain why the sky is blue in one sentence. Sunlight is scattered by the air, blue light the most.",
    "user assistant system Response-1: Response-2: Response-3: answer question hello world edge board MQTT",
    "0123456789 + - * / = ( ) [ ] { } , . ; : ! ? ' \" \n\t",
]


def build_tiny_model(
    out_dir: str | Path,
    *,
    seed: int = 0,
    vocab_size: int = 512,
    hidden: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate: int = 128,
    context_length: int = 2048,
    eos_logit_bias: float = -1000.0,
) -> Path:
    """Write a loadable model directory to `out_dir` and return it.

    `eos_logit_bias` is added to the EOS logit: the default (-1000) means the model never stops on its own, so a
    generation always runs to `max_new_tokens`; a large positive value makes it stop at the first token.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(vocab_size)
    tokenizer.save(str(out / "tokenizer.json"))
    vocab = tokenizer.get_vocab_size()
    shape = _Shape(
        vocab=vocab,
        hidden=hidden,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=hidden // num_heads,
        intermediate=intermediate,
        context_length=context_length,
    )
    model = _build_graph(np.random.default_rng(seed), shape, eos_logit_bias=eos_logit_bias)
    import onnx

    onnx.save(model, str(out / "model.onnx"))
    _write_genai_config(out, shape)
    write_manifest(
        out,
        Manifest(
            name="tiny-random",
            source=f"edge_agent.model.tiny seed={seed}",
            precision="random",
            context_length=context_length,
            kv=KvGeometry(
                num_layers=num_layers, num_kv_heads=num_kv_heads, head_dim=shape.head_dim, dtype="float32"
            ),
            licence="Apache-2.0",
            template_kind="chat",
            chat_template=CHATML_TEMPLATE,
            eos_token_ids=(EOS_ID,),
            bos_token=None,
            eos_token=EOS_TOKEN,
            notes="random weights: for tests only, its text is noise",
        ),
    )
    return out


def _write_genai_config(out: Path, shape: _Shape):
    """The same genai_config.json the genai builder writes, so onnxruntime-genai can run the tiny model too."""
    import json

    vocab, hidden, num_layers, num_heads = shape.vocab, shape.hidden, shape.num_layers, shape.num_heads
    num_kv_heads, head_dim, context_length = shape.num_kv_heads, shape.head_dim, shape.context_length

    decoder = {
        "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
        "filename": "model.onnx",
        "head_size": head_dim,
        "hidden_size": hidden,
        "inputs": {
            "input_ids": "input_ids",
            "attention_mask": "attention_mask",
            "past_key_names": "past_key_values.%d.key",
            "past_value_names": "past_key_values.%d.value",
        },
        "outputs": {
            "logits": "logits",
            "present_key_names": "present.%d.key",
            "present_value_names": "present.%d.value",
        },
        "num_attention_heads": num_heads,
        "num_hidden_layers": num_layers,
        "num_key_value_heads": num_kv_heads,
    }
    config = {
        "model": {
            "bos_token_id": 1,
            "context_length": context_length,
            "decoder": decoder,
            "eos_token_id": EOS_ID,
            "pad_token_id": EOS_ID,
            "type": "llama",
            "vocab_size": vocab,
        },
        "search": {
            "do_sample": False,
            "max_length": context_length,
            "num_beams": 1,
            "past_present_share_buffer": True,
            "temperature": 1.0,
            "top_k": 50,
            "top_p": 1.0,
        },
    }
    (out / "genai_config.json").write_text(json.dumps(config, indent=4), encoding="utf-8")
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "eos_token": EOS_TOKEN,
                "bos_token": None,
                "add_bos_token": False,
                "tokenizer_class": "PreTrainedTokenizerFast",
            },
            indent=2,
        ),
        encoding="utf-8",
    )


def train_tokenizer(vocab_size: int):
    """The tiny models' byte-level BPE, trained in-process on a fixed corpus (the same ids every time)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS, trainer)
    return tokenizer


def _build_graph(rng, shape: _Shape, *, eos_logit_bias: float):
    from onnx import TensorProto, helper, numpy_helper

    vocab, hidden, num_layers, num_heads = shape.vocab, shape.hidden, shape.num_layers, shape.num_heads
    num_kv_heads, head_dim, intermediate = shape.num_kv_heads, shape.head_dim, shape.intermediate
    max_len = shape.context_length

    nodes, inits = [], []

    def weight(name: str, *shape: int, scale: float = 0.02, value=None) -> str:
        array = value if value is not None else rng.normal(0.0, scale, size=shape)
        inits.append(numpy_helper.from_array(np.asarray(array, dtype=np.float32), name))
        return name

    def node(op: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs) -> list[str]:
        nodes.append(
            helper.make_node(op, inputs, outputs, name=outputs[0] + "/" + op, domain=domain, **attrs)
        )
        return outputs

    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info(
            "attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]
        ),
    ]
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", vocab])
    ]
    kv_shape_in = ["batch_size", num_kv_heads, "past_sequence_length", head_dim]
    kv_shape_out = ["batch_size", num_kv_heads, "total_sequence_length", head_dim]
    for i in range(num_layers):
        for kind in ("key", "value"):
            inputs.append(
                helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", TensorProto.FLOAT, kv_shape_in)
            )
            outputs.append(
                helper.make_tensor_value_info(f"present.{i}.{kind}", TensorProto.FLOAT, kv_shape_out)
            )

    # seqlens_k = total tokens - 1 per row, total_sequence_length = mask width: as the genai builder computes them.
    inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "axes_1"))
    inits.append(numpy_helper.from_array(np.array(1, dtype=np.int64), "one_i64"))
    node("ReduceSum", ["attention_mask", "axes_1"], ["mask_sum"], keepdims=0)
    node("Sub", ["mask_sum", "one_i64"], ["seqlens_k_64"])
    node("Cast", ["seqlens_k_64"], ["seqlens_k"], to=TensorProto.INT32)
    node("Shape", ["attention_mask"], ["mask_shape"])
    node("Gather", ["mask_shape", "one_i64"], ["total_len_64"], axis=0)
    node("Cast", ["total_len_64"], ["total_seq_len"], to=TensorProto.INT32)

    inv_freq = 1.0 / (10000.0 ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    freqs = np.outer(np.arange(max_len, dtype=np.float64), inv_freq)
    weight("cos_cache", value=np.cos(freqs))
    weight("sin_cache", value=np.sin(freqs))

    def rms_norm(x: str, weight_name: str, out: str) -> str:
        norm = [x, weight(weight_name, value=np.ones(hidden))]
        return node("SimplifiedLayerNormalization", norm, [out], axis=-1, epsilon=1e-5)[0]

    node("Gather", [weight("embed_tokens", vocab, hidden, scale=1.0), "input_ids"], ["h0"])
    x = "h0"
    for i in range(num_layers):
        p = f"layers.{i}"
        n1 = rms_norm(x, f"{p}.ln1", f"{p}.n1")
        q = node("MatMul", [n1, weight(f"{p}.q", hidden, num_heads * head_dim)], [f"{p}.q_out"])[0]
        k = node("MatMul", [n1, weight(f"{p}.k", hidden, num_kv_heads * head_dim)], [f"{p}.k_out"])[0]
        v = node(
            "MatMul", [n1, weight(f"{p}.v", hidden, num_kv_heads * head_dim, scale=0.5)], [f"{p}.v_out"]
        )[0]
        node(
            "GroupQueryAttention",
            [
                q,
                k,
                v,
                f"past_key_values.{i}.key",
                f"past_key_values.{i}.value",
                "seqlens_k",
                "total_seq_len",
                "cos_cache",
                "sin_cache",
            ],
            [f"{p}.attn", f"present.{i}.key", f"present.{i}.value"],
            domain="com.microsoft",
            num_heads=num_heads,
            kv_num_heads=num_kv_heads,
            do_rotary=1,
            rotary_interleaved=0,
            scale=float(head_dim**-0.5),
        )
        (o,) = node(
            "MatMul", [f"{p}.attn", weight(f"{p}.o", num_heads * head_dim, hidden, scale=0.5)], [f"{p}.o_out"]
        )
        (x,) = node("Add", [x, o], [f"{p}.r1"])
        n2 = rms_norm(x, f"{p}.ln2", f"{p}.n2")
        (gate,) = node("MatMul", [n2, weight(f"{p}.gate", hidden, intermediate)], [f"{p}.gate_out"])
        (up,) = node("MatMul", [n2, weight(f"{p}.up", hidden, intermediate)], [f"{p}.up_out"])
        (sig,) = node("Sigmoid", [gate], [f"{p}.sig"])
        (act,) = node("Mul", [gate, sig], [f"{p}.silu"])
        (prod,) = node("Mul", [act, up], [f"{p}.prod"])
        (down,) = node(
            "MatMul", [prod, weight(f"{p}.down", intermediate, hidden, scale=0.5)], [f"{p}.down_out"]
        )
        (x,) = node("Add", [x, down], [f"{p}.r2"])
    final = rms_norm(x, "norm", "final_norm")
    bias = np.zeros(vocab)
    bias[EOS_ID] = eos_logit_bias
    (raw,) = node("MatMul", [final, weight("lm_head", hidden, vocab, scale=1.0)], ["logits_raw"])
    node("Add", [raw, weight("lm_head_bias", value=bias)], ["logits"])

    graph = helper.make_graph(nodes, "tiny-random", inputs, outputs, inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
        producer_name="edge-moa tiny",
    )
    model.ir_version = 8
    return model
