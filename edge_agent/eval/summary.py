"""Numbers from verdicts: win rate (ties half) with a bootstrap 95% CI, flip rate, lengths, length-controlled rate."""

from __future__ import annotations

import math

import numpy as np


def summarize(records: list[dict], *, seed: int = 0, resamples: int = 2000) -> dict:
    """Win rates are fractions (0..1) of A over B."""
    n = len(records)
    if n == 0:
        return {"n": 0, "win_rate": None, "ci_low": None, "ci_high": None, "flip_rate": None}
    verdicts = np.array([r["verdict"] for r in records], dtype=float)
    rng = np.random.default_rng(seed)
    boot = verdicts[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    len_a = np.array([r["len_a"] for r in records], dtype=float)
    len_b = np.array([r["len_b"] for r in records], dtype=float)
    preference = np.array([r["preference"] for r in records], dtype=float)
    return {
        "n": n,
        "win_rate": round(float(verdicts.mean()), 4),
        "ci_low": round(float(np.percentile(boot, 2.5)), 4),
        "ci_high": round(float(np.percentile(boot, 97.5)), 4),
        "wins": int((verdicts == 1).sum()), "ties": int((verdicts == 0.5).sum()), "losses": int((verdicts == 0).sum()),
        "mean_preference": round(float(preference.mean()), 4),
        "flip_rate": round(float(np.mean([bool(r["flip"]) for r in records])), 4),
        "mean_len_a": round(float(len_a.mean()), 1),
        "mean_len_b": round(float(len_b.mean()), 1),
        "lc_win_rate": length_controlled_win_rate(preference, len_a, len_b),
        "judge": records[0].get("judge"),
    }


def paired_difference(first: list[dict], second: list[dict], *, seed: int = 0, resamples: int = 2000) -> dict:
    """Two configurations' verdicts against one baseline, on the instructions both have: each one's win rate
    there and their difference (first - second) with a paired bootstrap 95% CI (one resample of instructions
    for both, so what an instruction's baseline answer does to both cancels)."""
    by_instruction = {r["instruction"]: r for r in second}
    both = [(r, by_instruction[r["instruction"]]) for r in first if r["instruction"] in by_instruction]
    other = sum(a["len_b"] != b["len_b"] for a, b in both)
    if other:
        raise ValueError(f"{other} of {len(both)} common instructions have another baseline answer in each file: "
                         "compare verdicts against one baseline")
    common = [(float(a["verdict"]), float(b["verdict"])) for a, b in both]
    n = len(common)
    if n == 0:
        return {"n": 0, "win_rate_first": None, "win_rate_second": None, "difference": None,
                "ci_low": None, "ci_high": None}
    pairs = np.array(common)
    rng = np.random.default_rng(seed)
    boot = pairs[rng.integers(0, n, size=(resamples, n))]
    differences = boot[..., 0].mean(axis=1) - boot[..., 1].mean(axis=1)
    return {
        "n": n,
        "win_rate_first": round(float(pairs[:, 0].mean()), 4),
        "win_rate_second": round(float(pairs[:, 1].mean()), 4),
        "difference": round(float(pairs[:, 0].mean() - pairs[:, 1].mean()), 4),
        "ci_low": round(float(np.percentile(differences, 2.5)), 4),
        "ci_high": round(float(np.percentile(differences, 97.5)), 4),
        "same_verdict": round(float(np.mean(pairs[:, 0] == pairs[:, 1])), 4),
    }


def length_controlled_win_rate(preference: np.ndarray, len_a: np.ndarray, len_b: np.ndarray) -> float | None:
    """AlpacaEval's length-controlled win rate in its minimal form (`length_controlled_minimal`: no instruction
    difficulty, no regularisation to its GPT-4 baselines, which are not in the sdist): a logistic regression of the
    soft preference on tanh(length difference / its std) plus an intercept, read at a length difference of 0,
    i.e. sigmoid(intercept). None when there are under 10 pairs or no length difference to regress on."""
    delta = len_a - len_b
    spread = float(delta.std())
    if len(preference) < 10 or spread == 0.0:
        return None
    x = np.stack([np.ones_like(delta), np.tanh(delta / spread)], axis=1)
    y = np.clip(preference, 0.0, 1.0)
    theta = np.zeros(2)
    ridge = 1e-3  # keeps Newton's steps finite when the preferences separate perfectly
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(x @ theta)))
        gradient = x.T @ (p - y) + ridge * theta
        hessian = (x.T * (p * (1 - p))) @ x + ridge * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if float(np.abs(step).max()) < 1e-8:
            break
    if not np.all(np.isfinite(theta)):
        return None
    return round(1.0 / (1.0 + math.exp(-theta[0])), 4)
