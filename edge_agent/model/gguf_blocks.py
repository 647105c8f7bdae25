"""GGUF weight blocks as the integers and scales MatMulNBits takes: 4-bit affine (Q4_0, Q4_1, Q4_K) or 8-bit.

Each reader returns the GGUF's own integers and exact float32 scales (fp16 values, or for the K types fp16
times a 6- or 8-bit integer: at most 19 significant bits, exact in float32), never re-rounded values. The byte
layouts are ggml's (ggml-quants.c `dequantize_row_*`); gguf-py's `gguf/quants.py` is the reference the unit
tests compare with.
"""

from __future__ import annotations

import numpy as np

QK_K = 256  # weights per K-quant super-block

FOUR_BIT = ("Q4_0", "Q4_1", "Q4_K")
EIGHT_BIT = ("Q5_0", "Q8_0", "Q6_K")


def _f16(raw: np.ndarray) -> np.ndarray:
    """Two bytes per value (last axis) -> float32."""
    return raw.copy().view(np.float16)[..., 0].astype(np.float32)


def unpack_blocks(tensor_type: str, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(q uint8 [N, nb, 32] in 0..15, d float32 [N, nb], m float32 [N, nb]) with w = d*q + m, for the 4-bit
    types; None for others."""
    rows = raw.shape[0]
    if tensor_type == "Q4_1":
        blocks = raw.reshape(rows, -1, 20)
        d, m, nibbles = _f16(blocks[..., 0:2]), _f16(blocks[..., 2:4]), blocks[..., 4:20]
    elif tensor_type == "Q4_0":
        blocks = raw.reshape(rows, -1, 18)
        d = _f16(blocks[..., 0:2])
        m, nibbles = -8.0 * d, blocks[..., 2:18]
    elif tensor_type == "Q4_K":
        return _q4_k(raw)
    else:
        return None
    # ggml packs weight j (< 16) in the low nibble of byte j and weight j + 16 in its high nibble
    q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=-1).astype(np.uint8)
    return q, d, m


def _q4_k(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_K super-block (144 bytes, 256 weights): fp16 d, fp16 dmin, 12 bytes of eight 6-bit scales and eight
    6-bit minimums, 128 bytes of nibbles. Sub-block j of 32 weights is `d*sc_j*q - dmin*mn_j`; its nibbles are
    the low (j even) or high (j odd) halves of bytes 32*(j//2) .. 32*(j//2)+31, weight l in byte l: not Q4_1's
    order (ggml `dequantize_row_q4_K`, `get_scale_min_k4`)."""
    rows = raw.shape[0]
    blocks = raw.reshape(rows, -1, 144)
    d, dmin = _f16(blocks[..., 0:2]), _f16(blocks[..., 2:4])
    packed = blocks[..., 4:16].reshape(rows, -1, 3, 4)
    low, high, mixed = packed[..., 0, :], packed[..., 1, :], packed[..., 2, :]
    sc = np.concatenate([low & 0x3F, (mixed & 0x0F) | ((low >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([high & 0x3F, (mixed >> 4) | ((high >> 2) & 0x30)], axis=-1)
    nibbles = blocks[..., 16:144].reshape(rows, -1, 4, 1, 32)
    q = ((nibbles >> np.array([0, 4], np.uint8).reshape(2, 1)) & 0x0F).reshape(rows, -1, 32).astype(np.uint8)
    scales = (d[..., None] * sc.astype(np.float32)).reshape(rows, -1)
    minimums = (-dmin[..., None] * mn.astype(np.float32)).reshape(rows, -1)
    return q, scales, minimums


def unpack_8bit_blocks(tensor_type: str, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(u uint8 [N, nb, block], s float32 [N, nb]) with w = s*(u - 128), as 8-bit MatMulNBits computes it without
    zero points, for Q5_0 and Q8_0 (blocks of 32) and Q6_K (blocks of 16); None for other types. Exact: the
    GGUF's integers shifted by 128 minus their own offset."""
    rows = raw.shape[0]
    if tensor_type == "Q8_0":
        blocks = raw.reshape(rows, -1, 34)
        signed = blocks[..., 2:34].copy().view(np.int8).astype(np.int16)
        return (signed + 128).astype(np.uint8), _f16(blocks[..., 0:2])
    if tensor_type == "Q5_0":
        blocks = raw.reshape(rows, -1, 22)
        high_bits = blocks[..., 2:6].copy().view(np.uint32)  # bit l: the 5th bit of weight l
        nibbles = blocks[..., 6:22]
        low = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=-1)
        high = ((high_bits >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)
        return (low | (high << 4)) + np.uint8(112), _f16(blocks[..., 0:2])  # d*(q - 16)
    if tensor_type == "Q6_K":
        return _q6_k(raw)
    return None


def _q6_k(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q6_K super-block (210 bytes, 256 weights): 128 bytes of low nibbles, 64 bytes of high 2-bit pairs, 16
    int8 scales, fp16 d; sub-block i of 16 weights is `d*sc_i*(q - 32)` (ggml `dequantize_row_q6_K`)."""
    rows = raw.shape[0]
    blocks = raw.reshape(rows, -1, 210)
    n = blocks.shape[1]
    ql = blocks[..., 0:128].reshape(rows, n, 2, 1, 64) >> np.array([0, 4], np.uint8).reshape(2, 1)
    ql = (ql & 0x0F).reshape(rows, n, 8, 32)
    qh = blocks[..., 128:192].reshape(rows, n, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(4, 1)
    qh = (qh & 0x03).reshape(rows, n, 8, 32)
    q = (ql | (qh << 4)).astype(np.int16).reshape(rows, n * 16, 16) - 32
    sc = blocks[..., 192:208].copy().view(np.int8).astype(np.float32)
    scales = (_f16(blocks[..., 208:210])[..., None] * sc).reshape(rows, n * 16)
    return (q + 128).astype(np.uint8), scales
