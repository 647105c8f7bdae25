"""GGUF 4-bit blocks: unpacking, MatMulNBits packing, and llama.cpp's Q/K row permutation, on synthetic bytes."""

import numpy as np

from edge_agent.model.gguf_exact import offset_digits, pack_for_matmul_nbits, reverse_permute, unpack_blocks


def q4_1_bytes(q: np.ndarray, d: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Encode as ggml does: fp16 d, fp16 m, then byte j = q[j] | q[j + 16] << 4."""
    rows, blocks, _ = q.shape
    nibbles = (q[..., :16] | (q[..., 16:] << 4)).astype(np.uint8)
    head = np.concatenate(
        [d.astype(np.float16)[..., None].view(np.uint8), m.astype(np.float16)[..., None].view(np.uint8)],
        axis=-1,
    )
    return np.concatenate([head, nibbles], axis=-1).reshape(rows, blocks * 20)


def test_q4_1_round_trip():
    rng = np.random.default_rng(0)
    q = rng.integers(0, 16, size=(6, 3, 32)).astype(np.uint8)
    d = rng.uniform(0.01, 0.1, size=(6, 3)).astype(np.float16).astype(np.float32)
    m = rng.uniform(-1, 0, size=(6, 3)).astype(np.float16).astype(np.float32)
    q2, d2, m2 = unpack_blocks("Q4_1", q4_1_bytes(q, d, m))
    assert np.array_equal(q2, q) and np.array_equal(d2, d) and np.array_equal(m2, m)


def test_symmetric_part_plus_block_offset_is_exact():
    rng = np.random.default_rng(1)
    q = rng.integers(0, 16, size=(4, 2, 32)).astype(np.float64)
    d, m = rng.uniform(0.01, 0.1, size=(4, 2)), rng.uniform(-1, 0, size=(4, 2))
    w = (d[..., None] * q + m[..., None]).reshape(4, 64)
    x = rng.normal(size=64)
    symmetric = (d[..., None] * (q - 8)).reshape(4, 64) @ x
    offsets = (m + 8 * d) @ x.reshape(2, 32).sum(-1).T
    assert np.allclose(symmetric + offsets, w @ x, rtol=1e-12)


def test_packing_puts_even_weights_in_low_nibbles():
    q = np.arange(32, dtype=np.uint8).reshape(1, 1, 32) % 16
    packed = pack_for_matmul_nbits(q)
    assert packed.shape == (1, 1, 16)
    assert packed[0, 0, 0] == (0 | 1 << 4) and packed[0, 0, 7] == (14 | 15 << 4)


def test_reverse_permute_undoes_llama_cpp_permute():
    n_head, head_dim = 3, 8
    rows = np.arange(n_head * head_dim * 5).reshape(n_head * head_dim, 5)
    # convert_hf_to_gguf.py: w.reshape(n_head, 2, dim // n_head // 2, *rest).swapaxes(1, 2).reshape(shape)
    permuted = rows.reshape(n_head, 2, head_dim // 2, 5).swapaxes(1, 2).reshape(rows.shape)
    assert np.array_equal(reverse_permute(permuted, n_head), rows)


def test_other_types_are_left_alone():
    assert unpack_blocks("Q6_K", np.zeros((2, 210), np.uint8)) is None


def test_two_offset_digits_hold_each_block_constant_to_a_196th_of_its_range():
    rng = np.random.default_rng(2)
    correction = rng.uniform(-0.6, 0.2, size=(5, 48)).astype(np.float32)  # 48 blocks: two chunks of 32
    q, scales = offset_digits(correction)
    assert q.shape == (5, 4, 32) and scales.shape == (5, 4) and q.max() <= 15
    per_digit = (scales[..., None] * (q.astype(np.float32) - 8)).reshape(5, 2, 64)  # digit-major
    rebuilt = per_digit.sum(axis=1)
    assert np.all(rebuilt[:, 48:] == 0)  # the padding slots carry nothing
    error = np.abs(rebuilt[:, :48] - correction)
    assert error.max() <= np.abs(correction).max() / 196
    one_digit = scales[:, :2, None] * (q[:, :2].astype(np.float32) - 8)
    assert np.abs(one_digit.reshape(5, 64)[:, :48] - correction).max() > 10 * error.max()  # the second digit counts
