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


def test_sampling_without_a_nucleus_draws_what_numpy_choice_would_for_the_same_generator():
    """The in-place cumulative draw (4x cheaper, paid per row per step) is rng.choice(p=softmax) exactly: one
    uniform against the cumulative sum, so the same generator state gives the same token."""
    ours, theirs = np.random.default_rng(5), np.random.default_rng(5)
    for _ in range(300):
        logits = (ours.normal(size=2000) * 3).astype(np.float32)
        theirs.normal(size=2000)
        scaled = logits.astype(np.float64) / 0.7
        p = np.exp(scaled - scaled.max())
        assert sample_next(logits, 0.7, 1.0, ours) == int(theirs.choice(2000, p=p / p.sum()))
