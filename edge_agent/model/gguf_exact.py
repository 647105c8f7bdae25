"""Put a GGUF's own 4-bit weights into the builder's MatMulNBits nodes (no second quantization of the weights).

A Q4_1 block (32 weights) is `w = d*q + m` with q in 0..15. MatMulNBits' fast symmetric int4 kernel computes
`scale*(q - 8)`, so with scale = d the rest is a per-block constant c = m + 8d:
`x . w = d * sum_k x_k (q_k - 8) + c * sum_k x_k`. The nibbles and scales are copied bit for bit; the constants
ride in the same kernel call: the input gets its 32-element block sums appended twice, the weights two extra
4-bit blocks per 32 blocks ("digits": c to within 1/196 of its row's range, residual of the first digit in the
second). One MatMulNBits per weight and no fp32 side matrices: a separate offset MatMul read 13 MB of fp32 per
token and cost 25-30 % of decode (issue 3); the digits cost KL +0.0008 against the fp32 reference.
Q4_0 (`d*(q-8)`) needs no constants. Re-rounding the dequantized weights instead moved the next-token
distribution by KL 0.31 (issue 3). Q4_K is the same affine form per 32-weight sub-block (gguf_blocks.py), with
float32 block constants.

Wider GGUF types go into 8-bit MatMulNBits (`s*(u - 128)`), exactly: Q5_0 and Q8_0 in blocks of 32, Q6_K in
blocks of 16 (Qwen2.5-0.5B's Q4_K_M file is mostly Q5_0: 896 columns are no multiple of 256, so llama.cpp used
Q5_0 there; the builder's int4 of it cost KL 0.095 against llama.cpp, the exact path 0.0016). A fused weight of
mixed types (Q4_K q and k with a Q6_K v) is re-rounded to 8 bits from the GGUF's dequantized values; unquantized
parts keep the builder's own quantization.

That digit form is exact on any onnxruntime ("portable"). The default form is faster: integer zero points
`z = round(-m/d)` in the graph and the exact minimums in `block_offsets.npz`, which the engine writes into the
kernel's prepacked per-block constants after loading (engine/block_offsets.py): no extra K, no block-sum nodes.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from ..artifact.block_offsets import write_block_offsets
from ..artifact.manifest import BLOCK_OFFSETS_FILE, EMBEDDING_FILES
from .gguf_blocks import FOUR_BIT, unpack_8bit_blocks, unpack_blocks

__all__ = [
    "apply_exact_weights",
    "offset_digits",
    "pack_for_matmul_nbits",
    "reverse_permute",
    "unpack_blocks",
]

log = logging.getLogger(__name__)

_BLOCK = 32
_HEAD_BLOCK = 64
_HEAD_PART_BYTES = 8 << 20  # output head rows per MatMulNBits (see _output_head)
_DIGITS = 2  # 4-bit digits per block constant: one gives KL 0.10, two 0.0057 (0.0049 with fp32 offsets)
# builder initializer prefix -> GGUF tensor names (concatenated along the output dimension)
_LAYER_MAP = {
    "attn.qkv_proj": ("attn_q", "attn_k", "attn_v"),
    "attn.q_proj": ("attn_q",),
    "attn.k_proj": ("attn_k",),
    "attn.v_proj": ("attn_v",),
    "attn.o_proj": ("attn_output",),
    "mlp.gate_proj": ("ffn_gate",),
    "mlp.up_proj": ("ffn_up",),
    "mlp.gate_up_proj": ("ffn_gate", "ffn_up"),  # builder option fuse_mlp_gate_up=true
    "mlp.down_proj": ("ffn_down",),
}
_NAME = re.compile(r"^model\.layers\.(\d+)\.(attn\.\w+|mlp\.\w+)\.MatMul\.weight_Q4$")


def pack_for_matmul_nbits(q: np.ndarray) -> np.ndarray:
    """MatMulNBits packs weights 2k and 2k+1 of a block into byte k (low nibble first)."""
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def pack_zero_points(z: np.ndarray) -> np.ndarray:
    """4-bit zero points [N, blocks] -> MatMulNBits' layout: two blocks per byte (low nibble first), rows padded
    to whole bytes, flattened."""
    rows, blocks = z.shape
    padded = np.zeros((rows, -(-blocks // 2) * 2), np.uint8)
    padded[:, :blocks] = z
    return (padded[:, 0::2] | (padded[:, 1::2] << 4)).reshape(-1).astype(np.uint8)


def reverse_permute(rows: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (convert_hf_to_gguf), as transformers' GGUF loader does."""
    dim = rows.shape[0] // n_head // 2
    return rows.reshape(n_head, dim, 2, *rows.shape[1:]).swapaxes(2, 1).reshape(rows.shape)


def apply_exact_weights(
    model_dir: Path, gguf: Path, *, num_heads: int, num_kv_heads: int, portable: bool = False
) -> int:
    """Rewrite model.onnx (+ .data) in place; returns how many MatMulNBits nodes now carry the GGUF's weights.
    `portable`: block constants as digit columns (exact on any onnxruntime) instead of zero points plus
    `block_offsets.npz` for the engine to write into the kernel's buffers."""
    import onnx
    from gguf import GGUFReader
    from onnx import helper, numpy_helper

    reader = GGUFReader(str(gguf))
    tensors = {t.name: t for t in reader.tensors}
    model = onnx.load(str(model_dir / "model.onnx"))
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    permuted = _field(reader, "general.architecture") == "llama"  # transformers reverse-permutes llama only
    new_nodes, replaced, augmented, offsets = [], 0, {}, []
    forms: dict[str, int] = {}
    for node in graph.node:
        new_nodes.append(node)
        if node.op_type != "MatMulNBits" or not (match := _NAME.match(node.input[1])):
            continue
        layer, kind = int(match.group(1)), match.group(2)
        names = [f"blk.{layer}.{part}.weight" for part in _LAYER_MAP.get(kind, ())]
        if not names or not all(n in tensors for n in names):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        n_out, k_in = attrs["N"], attrs["K"]
        if attrs.get("bits") != 4 or attrs.get("block_size") != _BLOCK:
            log.warning("%s: not the builder's 4-bit blocks of 32, keeping its weights", node.name)
            continue
        heads = {"attn_q": num_heads, "attn_k": num_kv_heads} if permuted else {}
        types = {tensors[n].tensor_type.name for n in names}
        if types <= set(FOUR_BIT):
            unpacked = [
                unpack_blocks(tensors[n].tensor_type.name, np.asarray(tensors[n].data)) for n in names
            ]
            q, d, m = (
                np.concatenate([_unpermuted(a, name, heads) for name, a in zip(names, column)])
                for column in zip(*unpacked)  # type: ignore[misc]
            )
            if q.shape[0] != n_out or q.shape[1] * _BLOCK != k_in:
                log.warning("%s: shapes differ from the GGUF's, keeping the builder's weights", node.name)
                continue
            packed, scales, zero_points = _four_bit(
                node, q, d, m, portable=portable, offsets=offsets, add=new_nodes, graph=graph, inits=inits,
                augmented=augmented,
            )  # fmt: skip
            bits, block, form = 4, _BLOCK, "4-bit exact"
        else:
            eight = _eight_bit(names, tensors, heads, k_in)
            if eight is None:
                continue
            packed, scales, exact = eight
            form = "8-bit exact" if exact else "8-bit re-rounded"
            if packed.shape[0] != n_out or packed.shape[1] * packed.shape[2] != k_in:
                log.warning("%s: shapes differ from the GGUF's, keeping the builder's weights", node.name)
                continue
            zero_points, bits, block = None, 8, packed.shape[2]
            for attribute in node.attribute:
                if attribute.name == "bits":
                    attribute.i = 8
                elif attribute.name == "block_size":
                    attribute.i = block
        bias = node.input[5] if len(node.input) > 5 else ""
        b_name, s_name = node.input[1], node.input[2]
        if bits == 8:
            base = b_name.removesuffix("weight_Q4")  # new names: the builder's 4-bit ones have other shapes
            b_name, s_name = f"{base}weight_Q8", f"{base}weight_scales_Q8"
            node.input[1], node.input[2] = b_name, s_name
            graph.initializer.extend(  # the builder's 4-bit ones are dropped as unused below
                [numpy_helper.from_array(packed, b_name), numpy_helper.from_array(scales.reshape(-1), s_name)]
            )
        else:
            inits[b_name].CopyFrom(numpy_helper.from_array(packed, b_name))
            inits[s_name].CopyFrom(numpy_helper.from_array(scales.reshape(-1), s_name))
        del node.input[3:]  # no zero points: the symmetric kernel's implicit 8 (4-bit) or 128 (8-bit)
        if zero_points is not None:
            zp_name = b_name.replace("weight_Q4", "weight_zero_points")
            graph.initializer.append(numpy_helper.from_array(zero_points, zp_name))
            node.input.append(zp_name)
        if bias:  # MatMulNBits' optional inputs: zero points, g_idx, bias
            node.input.extend([""] * (5 - len(node.input)) + [bias])
        replaced += 1
        forms[form] = forms.get(form, 0) + 1
    stale_shapes = [v for v in graph.value_info if v.name.startswith("/model/embed_tokens/")]
    for value in stale_shapes:
        graph.value_info.remove(value)
    # still topological: the block-sum nodes follow x's producer and precede x_aug's first reader
    del graph.node[:]
    graph.node.extend(new_nodes)
    head = _output_head(graph, tensors)
    replaced += head
    log.info(
        "GGUF weights: %s%s", ", ".join(f"{n} {f}" for f, n in forms.items()) or "none", ", 8-bit head" * head
    )
    table = tensors.get("token_embd.weight")
    if table is not None and (rows := unpack_8bit_blocks(table.tensor_type.name, np.asarray(table.data))):
        u, s = rows
        if u.shape[2] == _BLOCK:  # Q8_0, Q5_0: d*(q - c) with q - c in int8 and d a float16 value
            signed = (u.astype(np.int16) - 128).astype(np.int8).reshape(u.shape[0], -1)
            take_embeddings_out(graph, signed, s.astype(np.float16), model_dir)
    _drop_unused_initializers(graph)
    if offsets:
        write_block_offsets(model_dir / BLOCK_OFFSETS_FILE, offsets)
    (model_dir / "model.onnx.data").unlink(missing_ok=True)
    onnx.save_model(
        model,
        str(model_dir / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
        size_threshold=1024,
    )
    return replaced


def _field(reader, key: str):
    """A GGUF metadata string (None when absent)."""
    field = reader.fields.get(key)
    return None if field is None else bytes(field.parts[field.data[0]]).decode("utf-8")


def _unpermuted(rows: np.ndarray, name: str, heads: dict[str, int]) -> np.ndarray:
    """A GGUF tensor's rows in the checkpoint's order: llama.cpp permutes llama's Q and K rows only."""
    part = name.split(".")[2]
    return reverse_permute(rows, heads[part]) if part in heads else rows


def _four_bit(
    node, q, d, m, *, portable: bool, offsets: list, add: list, graph, inits: dict, augmented: dict
):
    """(packed weights, scales, zero points or None) of a 4-bit `w = d*q + m` weight; records the exact block
    minimums in `offsets` (tuned form) or adds the digit blocks and the input's block sums (portable form)."""
    packed, scales = pack_for_matmul_nbits(q), d
    correction = m + 8.0 * d  # what the symmetric kernel's implicit zero point 8 leaves out
    if not np.any(correction != 0):
        return packed, scales, None
    if not portable:
        z = np.clip(np.rint(-m / np.where(d == 0, 1, d)), 0, 15).astype(np.uint8)
        if np.any(m + d * z != 0):
            offsets.append((_compact(d), z, _compact(m)))
        return packed, scales, pack_zero_points(z)
    x, k_in = node.input[0], q.shape[1] * _BLOCK
    if x not in augmented:  # the block-sum nodes go before the first node that reads them
        augmented[x], nodes = _block_sums_appended(graph, inits, x, k_in)
        add[-1:-1] = nodes
    node.input[0] = augmented[x]
    digit_q, digit_scales = offset_digits(correction)
    for attribute in node.attribute:
        if attribute.name == "K":
            attribute.i = k_in + digit_q.shape[1] * _BLOCK
    return (
        np.concatenate([packed, pack_for_matmul_nbits(digit_q)], axis=1),
        np.concatenate([d, digit_scales], axis=1),
        None,
    )


def _compact(values: np.ndarray) -> np.ndarray:
    """float16 where that holds every value exactly (Q4_0/Q4_1), else float32 (Q4_K's d*sc and dmin*mn)."""
    half = values.astype(np.float16)
    return half if np.array_equal(half.astype(np.float32), values) else values.astype(np.float32)


def _eight_bit(names: list[str], tensors: dict, heads: dict[str, int], k_in: int):
    """(u uint8 [N, nb, block], s float32 [N, nb], exact) of an 8-bit MatMulNBits weight: the GGUF's own integers when
    every part is Q5_0/Q8_0/Q6_K with one block size; otherwise (parts of different types, other quantized
    types) the GGUF's dequantized weights re-rounded to 8 bits in blocks of 32, a quarter step or less of any
    4-bit-or-wider GGUF type. None when a part is not quantized (the builder's own int4 is kept)."""
    types = [tensors[n].tensor_type.name for n in names]
    unpacked = [unpack_8bit_blocks(t, np.asarray(tensors[n].data)) for n, t in zip(names, types)]
    if all(u is not None for u in unpacked) and len({u[0].shape[2] for u in unpacked}) == 1:  # type: ignore[index]
        u, s = (
            np.concatenate([_unpermuted(a, name, heads) for name, a in zip(names, column)])
            for column in zip(*unpacked)  # type: ignore[misc]
        )
        return u, s, True
    if any(t in ("F32", "F16", "BF16") for t in types):
        return None
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    dense = np.concatenate(
        [
            _unpermuted(
                dequantize(np.asarray(tensors[n].data), GGMLQuantizationType[t]).reshape(-1, k_in), n, heads
            )
            for n, t in zip(names, types)
        ]
    ).astype(np.float32)
    blocks = dense.reshape(dense.shape[0], -1, _BLOCK)
    s = np.abs(blocks).max(axis=-1) / 127.0
    s[s == 0] = 1.0
    return (
        (np.clip(np.rint(blocks / s[..., None]), -127, 127) + 128).astype(np.uint8),
        s.astype(np.float32),
        False,
    )


def offset_digits(correction: np.ndarray, digits: int = _DIGITS) -> tuple[np.ndarray, np.ndarray]:
    """Block constants c [N, nb] as `digits` 4-bit blocks per 32 of them: (q uint8 [N, digits*chunks, 32],
    scales [N, digits*chunks]) with sum over digits of scale*(q - 8) ~= c, digit-major, zero-padded to 32."""
    rows, n_blocks = correction.shape
    chunks = -(-n_blocks // _BLOCK)
    rest = np.zeros((rows, chunks * _BLOCK), np.float32)
    rest[:, :n_blocks] = correction
    rest = rest.reshape(rows, chunks, _BLOCK)
    qs, scales = [], []
    for _ in range(digits):
        scale = np.abs(rest).max(axis=-1) / 7.0
        scale[scale == 0] = 1.0
        q = np.clip(np.rint(rest / scale[..., None]), -8, 7)
        rest = rest - q * scale[..., None]
        qs.append((q + 8).astype(np.uint8))
        scales.append(scale.astype(np.float32))
    return np.concatenate(qs, axis=1), np.concatenate(scales, axis=1)


def _block_sums_appended(graph, inits: dict, x: str, k_in: int) -> tuple[str, list]:
    """Nodes for `x_aug = [x, s, s]` (s = x's block sums zero-padded to 32, once per digit) and x_aug's name."""
    from onnx import helper, numpy_helper

    n_blocks = k_in // _BLOCK
    indicator_name = f"block_sum_indicator_{k_in}"
    if indicator_name not in inits:  # one per input width, shared by every layer
        indicator = np.zeros((k_in, -(-n_blocks // _BLOCK) * _BLOCK), np.float32)
        indicator[np.arange(k_in), np.arange(k_in) // _BLOCK] = 1.0
        inits[indicator_name] = numpy_helper.from_array(indicator, indicator_name)
        graph.initializer.append(inits[indicator_name])
    sums, augmented = f"{x}/block_sums", f"{x}/with_block_sums"
    nodes = [
        helper.make_node("MatMul", [x, indicator_name], [sums], name=f"{x}/BlockSums"),
        helper.make_node("Concat", [x] + [sums] * _DIGITS, [augmented], name=f"{x}/WithBlockSums", axis=-1),
    ]
    return augmented, nodes


def _output_head(graph, tensors: dict) -> int:
    """Quantized output head (Q8_0; Q6_K in Qwen2.5-1.5B's Q4_K_M, any type gguf-py dequantizes) -> 8-bit
    MatMulNBits in 64-weight blocks, re-rounded from the GGUF's values, split by output rows into parts of at
    most 8 MB joined by a Concat.

    onnxruntime's 8-bit kernel runs a 64-block head 2.2x faster than a 32-block one (docs/performance.md); the
    re-rounding is at 8-bit precision. A 4-bit head instead cost KL 0.11. The parts are prepacked one after the
    other: loading then holds one part twice, not the whole head (peak RSS -8 MB for SmolLM2).
    """
    from onnx import helper, numpy_helper

    source = tensors.get("output.weight") or tensors.get("token_embd.weight")
    head = next(
        (n for n in graph.node if n.op_type == "MatMulNBits" and n.input[1].startswith("lm_head.")), None
    )
    if source is None or head is None or source.tensor_type.name in ("F32", "F16", "BF16"):
        return 0
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    attrs = {a.name: helper.get_attribute_value(a) for a in head.attribute}
    n_out, k_in = attrs["N"], attrs["K"]
    try:  # Q8_0: float32(d) * q, as ggml computes it
        dense = dequantize(np.asarray(source.data), GGMLQuantizationType[source.tensor_type.name])
    except NotImplementedError:
        return 0
    if dense.size != n_out * k_in or dense.shape[0] != n_out:
        return 0
    n_blocks = -(-k_in // _HEAD_BLOCK)
    weights = np.zeros((n_out, n_blocks * _HEAD_BLOCK), np.float32)
    weights[:, :k_in] = dense.reshape(n_out, k_in)
    del dense
    blocks = weights.reshape(n_out, n_blocks, _HEAD_BLOCK)
    scales = np.abs(blocks).max(axis=-1) / 127.0
    scales[scales == 0] = 1.0
    # 8-bit MatMulNBits computes scale*(u - 128)
    u = (np.clip(np.rint(blocks / scales[..., None]), -127, 127) + 128).astype(np.uint8)
    rows = max(1, _HEAD_PART_BYTES // u[0].nbytes)
    index = list(graph.node).index(head)
    graph.node.remove(head)
    parts = []
    for start in range(0, n_out, rows):
        end = min(n_out, start + rows)
        b_name, s_name = (
            f"lm_head.MatMul.weight_Q8.rows{start}",
            f"lm_head.MatMul.weight_scales_Q8.rows{start}",
        )
        graph.initializer.extend(
            [
                numpy_helper.from_array(u[start:end], b_name),
                numpy_helper.from_array(scales[start:end].reshape(-1), s_name),
            ]
        )
        part = helper.make_node(
            "MatMulNBits",
            [head.input[0], b_name, s_name],
            [f"{head.output[0]}/rows{start}"],
            name=f"{head.name}/rows{start}",
            domain="com.microsoft",
            **{**attrs, "N": end - start, "bits": 8, "block_size": _HEAD_BLOCK},
        )
        parts.append(part)
    outputs = [part.output[0] for part in parts]
    join = helper.make_node("Concat", outputs, [head.output[0]], name=f"{head.name}/rows", axis=-1)
    for offset, node in enumerate([*parts, join]):
        graph.node.insert(index + offset, node)
    return 1


def take_embeddings_out(graph, q: np.ndarray, d: np.ndarray, model_dir: Path) -> bool:
    """The token table (w = d*q per block of 32) leaves the graph for two .npy files that the engine
    memory-maps (only the rows in use are read: 28 MB less RSS for SmolLM2); the graph then takes
    `inputs_embeds` instead of `input_ids`. False when the graph has no table lookup of input_ids."""
    from onnx import TensorProto, helper

    gather = next(
        (n for n in graph.node if n.op_type in ("Gather", "GatherBlockQuantized") and "input_ids" in n.input),
        None,
    )
    if gather is None:
        return False
    np.save(model_dir / EMBEDDING_FILES[0], q.astype(np.int8))
    np.save(model_dir / EMBEDDING_FILES[1], d.astype(np.float16))
    table_producers = [n for n in graph.node if n.op_type == "Reshape" and n.output[0] == gather.input[0]]
    for node in [gather, *table_producers]:
        graph.node.remove(node)
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name == gather.output[0]:
                node.input[index] = "inputs_embeds"
    graph.input.remove(next(i for i in graph.input if i.name == "input_ids"))
    embeds = helper.make_tensor_value_info(
        "inputs_embeds", TensorProto.FLOAT, ["batch_size", "sequence_length", q.shape[1]]
    )
    graph.input.insert(0, embeds)
    _drop_unused_initializers(graph)
    return True


def _drop_unused_initializers(graph) -> None:
    used = {name for node in graph.node for name in node.input}
    for init in [init for init in graph.initializer if init.name not in used]:
        graph.initializer.remove(init)
