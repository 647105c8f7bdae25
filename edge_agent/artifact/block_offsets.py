"""The exact block minimums file of a built model (`block_offsets.npz`): written by the build, read by the engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_block_offsets(path: Path, weights: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
    """Save (d float16 [N, blocks], z uint8 [N, blocks], m float16 [N, blocks]) per patched weight."""
    arrays = {}
    for index, (d, z, m) in enumerate(weights):
        arrays[f"{index}.d"], arrays[f"{index}.z"], arrays[f"{index}.m"] = d, z, m
    with open(path, "wb") as file:
        np.savez(file, **arrays)
