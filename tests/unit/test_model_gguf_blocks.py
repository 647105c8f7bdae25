"""GGUF Q4_K, Q5_0, Q6_K and Q8_0 blocks read into MatMulNBits' integers and scales, against gguf-py's own
dequantization (the reference) and against blocks encoded here from known integers."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType, dequantize, quantize

from edge_agent.model.gguf_blocks import unpack_8bit_blocks, unpack_blocks


def _f16_bytes(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float16)[..., None].view(np.uint8)


def q4_k_bytes(q: np.ndarray, sc: np.ndarray, mn: np.ndarray, d: np.ndarray, dmin: np.ndarray) -> np.ndarray:
    """Encode super-blocks as ggml does (quantize_row_q4_K_ref): q [R, S, 8, 32], sc/mn [R, S, 8] (6-bit),
    d/dmin [R, S]."""
    rows, supers = d.shape
    scales = np.zeros((rows, supers, 12), np.uint8)
    scales[..., 0:4] = sc[..., :4] | ((sc[..., 4:] >> 4) << 6)
    scales[..., 4:8] = mn[..., :4] | ((mn[..., 4:] >> 4) << 6)
    scales[..., 8:12] = (sc[..., 4:] & 0x0F) | ((mn[..., 4:] & 0x0F) << 4)
    pairs = q.reshape(rows, supers, 4, 2, 32)  # sub-blocks 2c and 2c+1 share bytes 32c..32c+31
    nibbles = (pairs[..., 0, :] | (pairs[..., 1, :] << 4)).reshape(rows, supers, 128)
    blocks = np.concatenate([_f16_bytes(d), _f16_bytes(dmin), scales, nibbles], axis=-1)
    return blocks.reshape(rows, supers * 144).astype(np.uint8)


def _random_k_blocks(rng, rows: int, supers: int, size: int, d_offset: int) -> np.ndarray:
    """Random bytes with a finite fp16 d (and dmin) where the type keeps them: every other byte pattern is a
    valid block."""
    raw = rng.integers(0, 256, size=(rows, supers, size), dtype=np.uint8)
    for offset in d_offset:
        raw[..., offset : offset + 2] = _f16_bytes(rng.uniform(-0.05, 0.05, size=(rows, supers)))
    return raw.reshape(rows, supers * size)


def test_q4_k_gives_back_the_integers_it_was_encoded_from():
    rng = np.random.default_rng(0)
    rows, supers = 3, 2
    q = rng.integers(0, 16, size=(rows, supers, 8, 32)).astype(np.uint8)
    sc = rng.integers(0, 64, size=(rows, supers, 8)).astype(np.uint8)
    mn = rng.integers(0, 64, size=(rows, supers, 8)).astype(np.uint8)
    d = rng.uniform(0.001, 0.01, size=(rows, supers)).astype(np.float16).astype(np.float32)
    dmin = rng.uniform(0.001, 0.01, size=(rows, supers)).astype(np.float16).astype(np.float32)

    q2, d2, m2 = unpack_blocks("Q4_K", q4_k_bytes(q, sc, mn, d, dmin))

    assert np.array_equal(q2, q.reshape(rows, supers * 8, 32))
    assert np.array_equal(d2, (d[..., None] * sc).reshape(rows, -1))
    assert np.array_equal(m2, (-dmin[..., None] * mn).reshape(rows, -1))


def test_q4_k_matches_gguf_py_bit_for_bit():
    rng = np.random.default_rng(1)
    raw = _random_k_blocks(rng, 4, 3, 144, (0, 2))
    q, d, m = unpack_blocks("Q4_K", raw)
    assert q.shape == (4, 24, 32) and q.max() <= 15
    ours = (d[..., None] * q.astype(np.float32) + m[..., None]).reshape(4, -1)
    reference = dequantize(raw, GGMLQuantizationType.Q4_K)
    assert np.array_equal(ours.view(np.uint32), reference.astype(np.float32).view(np.uint32))
    # not Q4_1's nibble order: reading it that way gives other weights
    q1_order = np.concatenate(
        [raw.reshape(4, 3, 144)[..., 16:32] & 15, raw.reshape(4, 3, 144)[..., 16:32] >> 4], -1
    )
    assert not np.array_equal(q[:, 0], q1_order[:, 0])


@pytest.mark.parametrize(
    ("kind", "size", "d_offset", "block"),
    [("Q6_K", 210, (208,), 16), ("Q5_0", 22, (0,), 32), ("Q8_0", 34, (0,), 32)],
)
def test_8_bit_blocks_match_gguf_py_bit_for_bit(kind: str, size: int, d_offset: tuple, block: int):
    rng = np.random.default_rng(2)
    supers = 2
    raw = _random_k_blocks(rng, 5, supers, size, d_offset)
    u, s = unpack_8bit_blocks(kind, raw)
    per_block = 256 if kind == "Q6_K" else 32
    assert u.shape == (5, supers * per_block // block, block) and s.shape == u.shape[:2]
    ours = (s[..., None] * (u.astype(np.float32) - 128)).reshape(5, -1)
    reference = dequantize(raw, getattr(GGMLQuantizationType, kind)).astype(np.float32)
    assert np.array_equal(ours.view(np.uint32), reference.view(np.uint32))


def test_q5_0_integers_are_the_quantized_ones_shifted():
    rng = np.random.default_rng(3)
    weights = rng.normal(size=(2, 64)).astype(np.float32)
    raw = quantize(weights, GGMLQuantizationType.Q5_0)
    u, s = unpack_8bit_blocks("Q5_0", raw)
    assert u.min() >= 112 and u.max() <= 143  # q - 16 in -16..15
    assert np.abs(s[..., None] * (u.astype(np.float32) - 128) - weights.reshape(2, 2, 32)).max() <= s.max()


def test_other_types_are_left_alone():
    assert unpack_blocks("Q6_K", np.zeros((2, 210), np.uint8)) is None
    assert unpack_8bit_blocks("Q4_K", np.zeros((2, 144), np.uint8)) is None
    assert unpack_8bit_blocks("Q5_1", np.zeros((2, 24), np.uint8)) is None
