"""The GGUF path through onnxruntime's real MatMulNBits kernel in its portable form: Q4_1 nibbles and scales copied
as they are, each block's constant riding in the same node as two digit blocks over the input's appended block sums
(gguf_exact.py). The default form (integer zero points + block_offsets.npz) is in test_block_offsets.py.
"""

import numpy as np
import pytest

from edge_agent.artifact.manifest import BLOCK_OFFSETS_FILE, read_manifest
from edge_agent.artifact.store import is_built, model_dir_for
from edge_agent.engine.onnx import OnnxEngine
from edge_agent.errors import InferenceError
from edge_agent.model.gguf_exact import offset_digits, pack_for_matmul_nbits
from tests.integration.onnx_helpers import matmul_nbits_session


def test_q4_1_weights_with_offset_digits_match_the_dense_matmul():
    rng = np.random.default_rng(0)
    n, k = 48, 96
    blocks = k // 32
    q = rng.integers(0, 16, size=(n, blocks, 32)).astype(np.uint8)
    d = rng.uniform(0.01, 0.05, size=(n, blocks)).astype(np.float32)
    m = rng.uniform(-0.4, 0.0, size=(n, blocks)).astype(np.float32)
    dense = (d[..., None] * q + m[..., None]).reshape(n, k)
    digit_q, digit_scales = offset_digits(m + 8 * d)
    packed = np.concatenate([pack_for_matmul_nbits(q), pack_for_matmul_nbits(digit_q)], axis=1)
    scales = np.concatenate([d, digit_scales], axis=1)
    session = matmul_nbits_session(k + 64, n, {"B": packed, "scales": scales.reshape(-1)}, accuracy_level=1)

    x = rng.normal(size=(1, 5, k)).astype(np.float32)
    sums = np.zeros((1, 5, 32), np.float32)
    sums[..., :blocks] = x.reshape(1, 5, blocks, 32).sum(-1)
    (y,) = session.run(None, {"x": np.concatenate([x, sums, sums], axis=-1)})
    exact = x @ dense.T
    # each block constant is held to 1/196 of its row's range: far below one Q4_1 step (d/2 per weight)
    bound = np.abs(m + 8 * d).max() / 196 * np.abs(sums).sum(-1, keepdims=True) + 1e-4
    assert np.all(np.abs(y - exact) <= bound)
    requantized = (
        x @ (np.round(dense / d.repeat(32, axis=1)) * d.repeat(32, axis=1)).T
    )  # a zero point rounded
    assert np.abs(y - exact).max() < np.abs(requantized - exact).max() / 10


@pytest.mark.slow
def test_where_the_kernel_cannot_be_patched_the_build_is_portable(default_model_dir, tmp_path, monkeypatch):
    """Another onnxruntime or CPU family lays MatMulNBits' buffers out otherwise (simulated here: this machine's
    own probe is made to fail): the build falls back to the digit form, exact by itself, without block offsets,
    and gives the same next-token distributions as the default build."""
    from edge_agent.model import build

    def foreign_layout(*args):
        raise InferenceError("of 150 weights' block minimums, 150 not found")

    monkeypatch.setattr(build, "_check_tuned", foreign_layout)
    work = default_model_dir.parent / f".{default_model_dir.name}.work"  # the cached GGUF download
    out = build.build_model("smollm2-135m-instruct", out_dir=tmp_path / "portable", work_dir=work)

    manifest = read_manifest(out)
    assert manifest.block_offsets == "" and not (out / BLOCK_OFFSETS_FILE).exists()
    reference_dir = model_dir_for("smollm2-135m-instruct-fp32")
    if not is_built(reference_dir):
        pytest.skip("fp32 reference not built (make test-models)")
    reference = OnnxEngine(reference_dir, threads=2)
    ids = reference.encode(
        "Small language models answer questions on single-board computers, although slowly."
    )
    expected = _log_softmax(reference.next_token_logits(ids))
    kl = {}
    for name, path in (("default", default_model_dir), ("portable", out)):
        ours = _log_softmax(OnnxEngine(path, threads=2).next_token_logits(ids))
        kl[name] = float(np.mean(np.sum(np.exp(expected) * (expected - ours), axis=-1)))
    # both exact Q4_1; llama.cpp scores 0.0066 on the bench text, a rounded zero point alone 0.44
    assert kl["portable"] < 0.02 and kl["default"] < 0.02
    assert abs(kl["portable"] - kl["default"]) < 0.005


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize(("kind", "block"), [("Q5_0", 32), ("Q6_K", 16)])
def test_q5_0_and_q6_k_as_8_bit_blocks_give_the_dequantized_matmul(kind: str, block: int):
    """The GGUF's integers shifted into 8-bit MatMulNBits (implicit zero point 128), on the kernel the builder's
    graphs use (accuracy_level 4: int8 activations): what is left is the activations' int8 rounding."""
    from gguf import GGMLQuantizationType, dequantize

    from edge_agent.model.gguf_blocks import unpack_8bit_blocks

    rng = np.random.default_rng(1)
    n, k = 40, 512
    size = {"Q5_0": 22 * k // 32, "Q6_K": 210 * k // 256}[kind]
    raw = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    d_at = {"Q5_0": range(0, size, 22), "Q6_K": range(208, size, 210)}[kind]
    for offset in d_at:  # finite fp16 scales
        raw[:, offset : offset + 2] = rng.uniform(0.001, 0.01, size=(n, 1)).astype(np.float16).view(np.uint8)
    dense = dequantize(raw, getattr(GGMLQuantizationType, kind)).astype(np.float32)
    u, s = unpack_8bit_blocks(kind, raw)
    assert u.shape[2] == block
    x = rng.normal(size=(1, 3, k)).astype(np.float32)
    exact = x @ dense.T
    errors = {}
    for level in (1, 4):
        session = matmul_nbits_session(
            k, n, {"B": u, "scales": s.reshape(-1)}, bits=8, block_size=block, accuracy_level=level
        )
        (y,) = session.run(None, {"x": x})
        errors[level] = np.abs(y - exact).max()
    scale = np.abs(exact).max()
    assert errors[1] < 1e-5 * scale  # fp32 activations: exact up to float summation
    assert errors[4] < 2e-2 * scale  # int8 activations
    rounded = (
        x @ (np.rint(dense / np.abs(dense).max() * 7) * np.abs(dense).max() / 7).T
    )  # a 4-bit re-rounding
    assert errors[4] < np.abs(rounded - exact).max() / 4


def _random_gguf_rows(rng, kind: str, rows: int, k: int) -> np.ndarray:
    """Valid random blocks of a GGUF type (finite fp16 scales), [rows, bytes]."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, size = GGML_QUANT_SIZES[getattr(GGMLQuantizationType, kind)]
    raw = rng.integers(0, 256, size=(rows, k // block, size), dtype=np.uint8)
    at = {"Q4_K": (0, 2), "Q6_K": (208,), "Q5_0": (0,), "Q8_0": (0,)}[kind]
    for offset in at:
        raw[..., offset : offset + 2] = (
            rng.uniform(0.001, 0.004, size=raw.shape[:2] + (1,)).astype(np.float16).view(np.uint8)
        )
    return raw.reshape(rows, -1)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_each_gguf_type_takes_its_path_through_a_builder_like_graph(tmp_path, arch: str):
    """One MatMulNBits per builder weight over a small GGUF: Q4_K -> exact 4-bit (portable digits), Q5_0 and Q6_K ->
    exact 8-bit, a fused Q4_K + Q6_K qkv -> 8-bit re-rounded, F32 -> the builder's weights left alone; Q and K rows
    un-permuted for llama only (transformers' GGUF loader does the same, and the builder's graph follows it)."""
    import onnx
    import onnxruntime as ort
    from gguf import GGMLQuantizationType, GGUFWriter, dequantize
    from onnx import TensorProto, helper, numpy_helper

    from edge_agent.model.gguf_exact import apply_exact_weights, reverse_permute

    rng = np.random.default_rng(7)
    k, heads, kv_heads = 256, 4, 2
    weights = {  # GGUF name -> (type, rows)
        "attn_q": ("Q4_K", 64), "attn_k": ("Q4_K", 32), "attn_v": ("Q6_K", 32), "attn_output": ("Q4_K", 48),
        "ffn_gate": ("Q5_0", 48), "ffn_up": ("F32", 48), "ffn_down": ("Q6_K", 48),
    }  # fmt: skip
    writer = GGUFWriter(str(tmp_path / "m.gguf"), arch)
    dense = {}
    for name, (kind, rows) in weights.items():
        if kind == "F32":
            values = rng.normal(size=(rows, k)).astype(np.float32)
            writer.add_tensor(f"blk.0.{name}.weight", values)
            dense[name] = values
            continue
        raw = _random_gguf_rows(rng, kind, rows, k)
        writer.add_tensor(f"blk.0.{name}.weight", raw, raw_dtype=getattr(GGMLQuantizationType, kind))
        dense[name] = dequantize(raw, getattr(GGMLQuantizationType, kind)).astype(np.float32).reshape(rows, k)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if arch == "llama":
        dense["attn_q"], dense["attn_k"] = (
            reverse_permute(dense["attn_q"], heads),
            reverse_permute(dense["attn_k"], kv_heads),
        )

    nodes_spec = {"attn.qkv_proj": ("attn_q", "attn_k", "attn_v"), "attn.o_proj": ("attn_output",),
                  "mlp.gate_proj": ("ffn_gate",), "mlp.up_proj": ("ffn_up",), "mlp.down_proj": ("ffn_down",)}  # fmt: skip
    builder_up = rng.integers(0, 256, size=(48, k // 32, 16), dtype=np.uint8)  # the builder's own int4
    nodes, inits, outputs = [], [], []
    for kind, parts in nodes_spec.items():
        n = sum(weights[p][1] for p in parts)
        prefix = f"model.layers.0.{kind}.MatMul"
        packed = builder_up if kind == "mlp.up_proj" else np.zeros((n, k // 32, 16), np.uint8)
        inits += [numpy_helper.from_array(packed, f"{prefix}.weight_Q4"),
                  numpy_helper.from_array(np.full((n, k // 32), 0.01, np.float32), f"{prefix}.weight_scales")]  # fmt: skip
        nodes.append(helper.make_node(
            "MatMulNBits", ["x", f"{prefix}.weight_Q4", f"{prefix}.weight_scales"], [kind], name=kind,
            domain="com.microsoft", K=k, N=n, bits=4, block_size=32, accuracy_level=1,
        ))  # fmt: skip
        outputs.append(helper.make_tensor_value_info(kind, TensorProto.FLOAT, [1, "s", n]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "s", k])], outputs, inits
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 8
    onnx.save_model(model, str(tmp_path / "model.onnx"))

    assert (
        apply_exact_weights(
            tmp_path, tmp_path / "m.gguf", num_heads=heads, num_kv_heads=kv_heads, portable=True
        )
        == 4
    )

    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    x = rng.normal(size=(1, 3, k)).astype(np.float32)
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x})))
    kinds = {
        n.name: {a.name: helper.get_attribute_value(a) for a in n.attribute}["bits"]
        for n in onnx.load(str(tmp_path / "model.onnx")).graph.node
        if n.op_type == "MatMulNBits"
    }
    assert kinds == {
        "attn.qkv_proj": 8,
        "attn.o_proj": 4,
        "mlp.gate_proj": 8,
        "mlp.up_proj": 4,
        "mlp.down_proj": 8,
    }

    def error(kind: str) -> float:
        expected = x @ np.concatenate([dense[p] for p in nodes_spec[kind]]).T
        return float(np.abs(got[kind] - expected).max() / np.abs(expected).max())

    assert error("mlp.gate_proj") < 1e-5 and error("mlp.down_proj") < 1e-5  # the GGUF's integers
    # 4-bit exact, block constants to 1/196 of their range: far closer than a 4-bit re-rounding of the weights
    blocks = dense["attn_output"].reshape(48, -1, 32)
    step = np.abs(blocks).max(-1, keepdims=True) / 7
    rounded = x @ (np.rint(blocks / step) * step).reshape(48, k).T
    expected = x @ dense["attn_output"].T
    assert error("attn.o_proj") < np.abs(rounded - expected).max() / np.abs(expected).max() / 10
    assert error("attn.qkv_proj") < 1e-2  # re-rounded to 8 bits: a quarter of a Q4_K step at most
    assert error("mlp.up_proj") > 0.5  # not the GGUF's: the builder's weights, untouched
