"""The exact block minimums file of a built model (`block_offsets.npz`): written by the build, read by the engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_block_offsets(
    path: Path, weights: list[tuple[np.ndarray, np.ndarray, np.ndarray]], **extra: np.ndarray
) -> None:
    """Save (d [N, blocks], z uint8 [N, blocks], m [N, blocks]) per patched weight: d and m float16 where that is
    exact (Q4_1), float32 otherwise (Q4_K's sub-block scales and minimums). `extra`: more arrays by name (the
    kernel probe's nibbles)."""
    arrays = dict(extra)
    for index, (d, z, m) in enumerate(weights):
        arrays[f"{index}.d"], arrays[f"{index}.z"], arrays[f"{index}.m"] = d, z, m
    with open(path, "wb") as file:
        np.savez(file, **arrays)
