"""Put a GGUF's own 4-bit weights into the builder's MatMulNBits nodes (no second quantization of the weights).

A Q4_1 block (32 weights) is `w = d*q + m` with q in 0..15. MatMulNBits' fast symmetric int4 kernel computes
`scale*(q - 8)`, so with scale = d the rest is a per-block constant c = m + 8d:
`x . w = d * sum_k x_k (q_k - 8) + c * sum_k x_k`. The nibbles and scales are copied bit for bit; the constants
ride in the same kernel call: the input gets its 32-element block sums appended twice, the weights two extra
4-bit blocks per 32 blocks ("digits": c to within 1/196 of its row's range, residual of the first digit in the
second). One MatMulNBits per weight and no fp32 side matrices: a separate offset MatMul read 13 MB of fp32 per
token and cost 25-30 % of decode (issue 3); the digits cost KL +0.0008 against the fp32 reference.
Q4_0 (`d*(q-8)`) needs no constants. Re-rounding the dequantized weights instead moved the next-token
distribution by KL 0.31 (issue 3). Other GGUF types keep the builder's own quantization.

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


def unpack_blocks(tensor_type: str, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(q uint8 [N, nb, 32], d float32 [N, nb], m float32 [N, nb]) with w = d*q + m; None for other types."""
    rows = raw.shape[0]
    if tensor_type == "Q4_1":
        blocks = raw.reshape(rows, -1, 20)
        d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
        m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        nibbles = blocks[..., 4:20]
    elif tensor_type == "Q4_0":
        blocks = raw.reshape(rows, -1, 18)
        d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
        m = -8.0 * d
        nibbles = blocks[..., 2:18]
    else:
        return None
    # ggml packs weight j (< 16) in the low nibble of byte j and weight j + 16 in its high nibble
    q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=-1).astype(np.uint8)
    return q, d, m


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
    new_nodes, replaced, augmented, offsets = [], 0, {}, []
    for node in graph.node:
        new_nodes.append(node)
        if node.op_type != "MatMulNBits" or not (match := _NAME.match(node.input[1])):
            continue
        layer, kind = int(match.group(1)), match.group(2)
        names = [f"blk.{layer}.{part}.weight" for part in _LAYER_MAP.get(kind, ())]
        if not names or not all(n in tensors for n in names):
            continue
        unpacked = [unpack_blocks(tensors[n].tensor_type.name, np.asarray(tensors[n].data)) for n in names]
        if any(u is None for u in unpacked):
            continue
        parts = []
        for name, (q, d, m) in zip(names, unpacked):  # type: ignore[misc]
            if name.endswith("attn_q.weight"):
                q, d, m = (reverse_permute(a, num_heads) for a in (q, d, m))
            elif name.endswith("attn_k.weight"):
                q, d, m = (reverse_permute(a, num_kv_heads) for a in (q, d, m))
            parts.append((q, d, m))
        q = np.concatenate([p[0] for p in parts])
        d = np.concatenate([p[1] for p in parts])
        m = np.concatenate([p[2] for p in parts])
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        n_out, k_in, n_blocks = attrs["N"], attrs["K"], q.shape[1]
        if (
            attrs.get("bits") != 4
            or attrs.get("block_size") != _BLOCK
            or q.shape[0] != n_out
            or n_blocks * _BLOCK != k_in
        ):
            log.warning("%s: shapes differ from the GGUF's, keeping the builder's weights", node.name)
            continue
        packed, scales = pack_for_matmul_nbits(q), d
        correction = m + 8.0 * d  # what the symmetric kernel's implicit zero point 8 leaves out
        zero_points = None
        if np.any(correction != 0) and not portable:
            z = np.clip(np.rint(-m / np.where(d == 0, 1, d)), 0, 15).astype(np.uint8)
            zero_points = pack_zero_points(z)
            if np.any(m + d * z != 0):
                offsets.append((d.astype(np.float16), z, m.astype(np.float16)))
        elif np.any(correction != 0):
            x = node.input[0]
            if x not in augmented:  # the block-sum nodes go before the first node that reads them
                augmented[x], nodes = _block_sums_appended(graph, inits, x, k_in)
                new_nodes[-1:-1] = nodes
            node.input[0] = augmented[x]
            digit_q, digit_scales = offset_digits(correction)
            packed = np.concatenate([packed, pack_for_matmul_nbits(digit_q)], axis=1)
            scales = np.concatenate([d, digit_scales], axis=1)
            for attribute in node.attribute:
                if attribute.name == "K":
                    attribute.i = k_in + digit_q.shape[1] * _BLOCK
        b_name, s_name = node.input[1], node.input[2]
        inits[b_name].CopyFrom(numpy_helper.from_array(packed, b_name))
        inits[s_name].CopyFrom(numpy_helper.from_array(scales.reshape(-1), s_name))
        del node.input[3:]  # no zero points: the symmetric kernel's implicit 8
        if zero_points is not None:
            zp_name = b_name.replace("weight_Q4", "weight_zero_points")
            graph.initializer.append(numpy_helper.from_array(zero_points, zp_name))
            node.input.append(zp_name)
        replaced += 1
    stale_shapes = [v for v in graph.value_info if v.name.startswith("/model/embed_tokens/")]
    for value in stale_shapes:
        graph.value_info.remove(value)
    # still topological: the block-sum nodes follow x's producer and precede x_aug's first reader
    del graph.node[:]
    graph.node.extend(new_nodes)
    replaced += _output_head(graph, tensors)
    table = tensors.get("token_embd.weight")
    if table is not None and table.tensor_type.name == "Q8_0":
        take_embeddings_out(graph, *_q8_0(table), model_dir)
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


def _q8_0(tensor) -> tuple[np.ndarray, np.ndarray]:
    """(q int8 [rows, cols], d float16 [rows, cols/32]) of a GGUF Q8_0 tensor: w = d*q."""
    raw = np.asarray(tensor.data)
    blocks = raw.reshape(raw.shape[0], -1, 34)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0]
    q = blocks[..., 2:34].copy().view(np.int8).reshape(raw.shape[0], -1)
    return q, d


def _output_head(graph, tensors: dict) -> int:
    """Q8_0 output head -> 8-bit MatMulNBits in 64-weight blocks, re-rounded from the Q8_0 values, split by
    output rows into parts of at most 8 MB joined by a Concat.

    onnxruntime's 8-bit kernel runs a 64-block head 2.2x faster than a 32-block one (docs/performance.md); the
    re-rounding is at 8-bit precision. A 4-bit head instead cost KL 0.11. The parts are prepacked one after the
    other: loading then holds one part twice, not the whole head (peak RSS -8 MB for SmolLM2).
    """
    from onnx import helper, numpy_helper

    source = tensors.get("output.weight") or tensors.get("token_embd.weight")
    head = next(
        (n for n in graph.node if n.op_type == "MatMulNBits" and n.input[1].startswith("lm_head.")), None
    )
    if source is None or head is None or source.tensor_type.name != "Q8_0":
        return 0
    q, d = _q8_0(source)
    n_out, k_in = q.shape
    attrs = {a.name: helper.get_attribute_value(a) for a in head.attribute}
    if attrs["N"] != n_out or attrs["K"] != k_in:
        return 0
    n_blocks = -(-k_in // _HEAD_BLOCK)
    weights = np.zeros((n_out, n_blocks * _HEAD_BLOCK), np.float32)
    weights[:, :k_in] = (q.reshape(n_out, -1, _BLOCK) * d[..., None].astype(np.float32)).reshape(n_out, k_in)
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
        b_name, s_name = f"lm_head.MatMul.weight_Q8.rows{start}", f"lm_head.MatMul.weight_scales_Q8.rows{start}"
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
