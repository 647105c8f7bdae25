"""Next-token sampling: greedy, temperature, top-p and seeds, on plain arrays."""

import numpy as np

from edge_agent.engine.onnx import sample_next


def test_temperature_zero_is_argmax():
    logits = np.array([0.1, 3.0, 2.9, -1.0], dtype=np.float32)
    assert sample_next(logits, 0.0, 1.0, np.random.default_rng(0)) == 1


def test_same_seed_same_draws():
    logits = np.random.default_rng(1).normal(size=100)
    draws_a = [sample_next(logits, 1.0, 1.0, rng) for rng in [np.random.default_rng(7)] for _ in range(20)]
    draws_b = [sample_next(logits, 1.0, 1.0, rng) for rng in [np.random.default_rng(7)] for _ in range(20)]
    assert draws_a == draws_b
    assert len(set(draws_a)) > 1


def test_top_p_keeps_only_the_nucleus():
    # probabilities about 0.64, 0.24, 0.09, 0.03: top_p 0.7 keeps the first two only.
    logits = np.log(np.array([0.64, 0.24, 0.09, 0.03]))
    rng = np.random.default_rng(0)
    draws = {sample_next(logits, 1.0, 0.7, rng) for _ in range(500)}
    assert draws == {0, 1}


def test_tiny_top_p_is_greedy():
    logits = np.array([1.0, 2.0, 0.5])
    rng = np.random.default_rng(0)
    assert {sample_next(logits, 0.7, 1e-6, rng) for _ in range(50)} == {1}


def test_low_temperature_sharpens():
    logits = np.array([1.0, 1.5, 0.0])
    rng = np.random.default_rng(3)
    cold = [sample_next(logits, 0.05, 1.0, rng) for _ in range(200)]
    hot = [sample_next(logits, 5.0, 1.0, rng) for _ in range(200)]
    assert cold.count(1) > 195
    assert hot.count(1) < 150
