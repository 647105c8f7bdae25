"""Exact GGUF Q4_1 block minimums inside onnxruntime's fast 4-bit kernel.

A Q4_1 block of 32 weights is `w = d*q + m`. MatMulNBits computes `w = scale*(q - zp)`; its fast kernel (int8
activations, accuracy_level 4) splits that into `scale*q`, dotted in integers, plus a per-block constant
`BlkSum = -scale*zp` times the block's activation sum, which it works out once when it prepacks the weights.
With scale = d, BlkSum = m is Q4_1 exactly, but the operator only takes integer zero points. So a build puts the
nearest integer `z = round(-m/d)` in the graph (KL 0.44 against fp32 on its own: never run unpatched) and the
exact m beside it (`block_offsets.npz`); once the session has prepacked, `patch_block_minimums` finds each
weight's BlkSum array in this process's memory (it must equal -d*z bit for bit, in the kernel's layout) and
writes m over it. Against carrying the constants as extra K columns (`model build --portable`), decode is
13-20 % faster at 2 threads and RSS 10 MB lower (docs/performance.md).

Where onnxruntime lays these buffers out otherwise (another version, another CPU family), a weight is not found
and loading fails with a message that says to rebuild with `--portable`: never a silently wrong model.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from ..errors import InferenceError
from .process_memory import private_anonymous_regions, resident_runs

log = logging.getLogger(__name__)

_CHUNK = 1 << 20  # bytes of memory compared at once
_GROUP = 16  # the kernel keeps BlkSum for 16 output columns together: [N/16][blocks][16]


def _blksum_order(rows: int, blocks: int) -> np.ndarray:
    """Where BlkSum[n, b] sits in the kernel's flat array (rows padded to a multiple of 16)."""
    n = np.arange(rows)[:, None]
    b = np.arange(blocks)[None, :]
    return (n // _GROUP) * _GROUP * blocks + b * _GROUP + n % _GROUP


def _weight(offsets, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(where, what the kernel holds there: -d*z, what it should hold: m, its flat length) for one weight."""
    d = offsets[f"{index}.d"].astype(np.float32)
    z = offsets[f"{index}.z"].astype(np.float32)
    rows, blocks = d.shape
    return (
        _blksum_order(rows, blocks).reshape(-1),
        (-(d * z)).reshape(-1),
        offsets[f"{index}.m"].astype(np.float32).reshape(-1),
        -(-rows // _GROUP) * _GROUP * blocks,
    )


def _search_key(order: np.ndarray, held: np.ndarray, length: int) -> tuple[int, int]:
    """(8 bytes to look for, their byte offset in the array): two non-zero floats at an even index, so that
    a scan of aligned 8-byte words meets them and zero-filled memory does not."""
    flat = np.zeros(length, np.float32)
    flat[order] = held
    pairs = (flat[0::2] != 0) & (flat[1::2] != 0)
    if not pairs.any():
        raise InferenceError("a weight's block constants are all zero: nothing to patch")
    start = 2 * int(np.argmax(pairs))
    return int(flat[start : start + 2].view(np.uint64)[0]), 4 * start


def _scan(memory: int, keys: dict[int, list[int]]) -> dict[int, list[int]]:
    """{key: addresses} of every aligned 8-byte word in private anonymous memory equal to one of `keys`.

    Reads through /proc/self/mem, so memory unmapped meanwhile reads as an error, not a crash."""
    ordered = np.array(sorted(keys), np.uint64)
    found: dict[int, list[int]] = {}
    runs = [run for region in private_anonymous_regions() for run in resident_runs(*region)]
    for low, high in runs:
        for start in range(low, high, _CHUNK):
            data = _read(memory, min(_CHUNK, high - start), start)
            if not data:
                break
            words = np.frombuffer(data, np.uint64, len(data) // 8)
            slots = np.minimum(np.searchsorted(ordered, words), len(ordered) - 1)
            for offset in np.flatnonzero(ordered[slots] == words):
                found.setdefault(int(words[offset]), []).append(start + 8 * int(offset))
    return found


def _read(memory: int, size: int, address: int) -> bytes:
    try:
        return os.pread(memory, size, address)
    except OSError:  # not mapped (any more)
        return b""


def patch_block_minimums(path: Path) -> int:
    """Write every weight's exact minimums over onnxruntime's prepacked BlkSum; returns how many weights.

    Call after the session is created and before it runs. Raises InferenceError when a weight is not found."""
    started = time.perf_counter()
    offsets = np.load(path)
    count = len([name for name in offsets.files if name.endswith(".d")])
    keys: dict[int, list[int]] = {}
    shifts = []
    for index in range(count):
        order, held, _, length = _weight(offsets, index)
        key, shift = _search_key(order, held, length)
        keys.setdefault(key, []).append(index)
        shifts.append(shift)
    missing = []
    with open("/proc/self/mem", "r+b", buffering=0) as memory:
        found = _scan(memory.fileno(), keys)
        for key, indices in keys.items():
            for index in indices:
                # computed again rather than kept from the key pass: all weights' arrays at once are ~50 MB
                order, held, exact, length = _weight(offsets, index)
                patched = 0
                for address in found.get(key, ()):
                    data = _read(memory.fileno(), 4 * length, address - shifts[index])
                    current = np.frombuffer(data, np.float32).copy()
                    # bit for bit, padding rows aside; a kernel may hold more copies: each is patched
                    if len(current) == length and np.array_equal(
                        current[order].view(np.uint32), held.view(np.uint32)
                    ):
                        current[order] = exact
                        patched += os.pwrite(memory.fileno(), current.tobytes(), address - shifts[index]) > 0
                if not patched:
                    missing.append(index)
    if missing:
        raise InferenceError(
            f"{path.parent}: {len(missing)} of {count} weights' block minimums not found in onnxruntime's "
            f"prepacked buffers (onnxruntime {_ort_version()} lays them out differently from the machine that "
            "built this model); rebuild it here, or with `edge-moa model build --portable`"
        )
    log.info("exact block minimums for %d weights in %.2f s", count, time.perf_counter() - started)
    return count


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
