"""Exact GGUF Q4_1 (and Q4_K) block minimums inside onnxruntime's fast 4-bit kernel.

A Q4_1 block of 32 weights is `w = d*q + m`. MatMulNBits computes `w = scale*(q - zp)`; its fast kernel (int8
activations, accuracy_level 4) splits that into `scale*q`, dotted in integers, plus a per-block constant
`BlkSum = -scale*zp` times the block's activation sum, which it works out once when it prepacks the weights.
With scale = d, BlkSum = m is Q4_1 exactly, but the operator only takes integer zero points. So a build puts the
nearest integer `z = round(-m/d)` in the graph (KL 0.44 against fp32 on its own: never run unpatched) and the
exact m beside it (`block_offsets.npz`); once the session has prepacked, `BlockMinimumsPatch` finds each
weight's BlkSum array in this process's memory (it must equal -d*z bit for bit, in the kernel's layout) and
writes m over it. Against carrying the constants as extra K columns (`model build --portable`), decode is
13-20 % faster at 2 threads and RSS 10 MB lower (docs/performance.md).

The layout is MLAS's: `ComputePackBlkSum` in onnxruntime/core/mlas/lib/sqnbitgemm_kernel_avx_common.h (the
x86 AVX2/AVX-512 SQNBitGemm CompInt8 dispatch; read at commit 03195803bd45) writes `-QuantBScale * zp` of block
k_blk of column n at `((n / 16) * BlockCountK + k_blk) * 16 + n % 16` ("BlockSum is a width 16 row major
matrix"), in a buffer of `MlasDivRoundup(N, 16) * BlockCountK * 16` floats allocated with the packed weights
(`SQ4BitGemmPackQuantBDataSize`). Other dispatches (ARM NEON, another version) may lay it out otherwise, and
one kernel need not read it: on x86 without AVX-512 the one-row (decode) kernel applies the integer zero points
itself, which the build's kernel probe finds (kernel_probe.py): such machines get the portable build.

What makes the write safe to rely on (issue 13): each weight's whole BlkSum array (not just a key word) must be
found exactly once among the arrays that appeared while the session loaded, no two weights at one address,
and every weight found before any is written: otherwise nothing is written and IncompatibleModelError says to
rebuild with `--portable`. After the write the engine compares the model's logits on a fixed text with the
build's reference from the portable graph (fast_path.py): never a silently wrong model.
"""

from __future__ import annotations

import logging
import mmap
import os
import sys
import time
from contextlib import closing
from pathlib import Path

import numpy as np

from ..errors import IncompatibleModelError, InferenceError
from .process_memory import private_anonymous_regions, resident_runs
from .session import ort_version

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


def _search_key(order: np.ndarray, held: np.ndarray, length: int) -> tuple[int, int, tuple[int, int]]:
    """(8 bytes to look for, their byte offset in the array, (offset, 8 bytes) of a second word to probe a
    candidate with): two non-zero floats at an even index, so that a scan of aligned 8-byte words meets them
    and zero-filled memory does not. Values repeat across weights (tens of thousands of candidates): the probe,
    the last such pair, turns most away before the whole array is read."""
    flat = np.zeros(length, np.float32)
    flat[order] = held
    pairs = (flat[0::2] != 0) & (flat[1::2] != 0)
    start = 2 * int(np.argmax(pairs))
    last = 2 * (len(pairs) - 1 - int(np.argmax(pairs[::-1])))
    key = int(flat[start : start + 2].view(np.uint64)[0])
    probe = (4 * last, int(flat[last : last + 2].view(np.uint64)[0]))
    found = bool(pairs.any())
    flat.fill(0)  # a freed copy in the kernel's layout would be found as one more "copy" of the array
    if not found:
        raise InferenceError("a weight's block constants are all zero: nothing to patch")
    return key, 4 * start, probe


class _Memory:
    """This process's memory read through /proc/self/mem into one shared mapping: searched memory is never
    copied into private memory, where a freed copy would later look like one more match. Memory unmapped
    meanwhile reads as nothing, not a crash."""

    def __init__(self, size: int, *, write: bool = False):
        self._file = open("/proc/self/mem", "r+b" if write else "rb", buffering=0)  # noqa: SIM115
        self._buffer = mmap.mmap(-1, size)  # MAP_SHARED: not among the private regions searched
        self._view = memoryview(self._buffer)

    def read(self, address: int, size: int) -> memoryview:
        try:
            got = os.preadv(self._file.fileno(), [self._view[:size]], address)
        except OSError:  # not mapped (any more)
            got = 0
        return self._view[:got]

    def write(self, address: int, data: bytes) -> int:
        return os.pwrite(self._file.fileno(), data, address)

    def close(self) -> None:
        self._view.release()
        self._buffer.close()
        self._file.close()


def _scan(
    memory: _Memory, keys: dict[int, list[int]], regions: list[tuple[int, int]]
) -> dict[int, list[int]]:
    """{key: addresses} of every aligned 8-byte word in `regions` equal to one of `keys`."""
    ordered = np.array(sorted(keys), np.uint64)
    found: dict[int, list[int]] = {}
    runs = [run for region in regions for run in resident_runs(*region)]
    for low, high in runs:
        for start in range(low, high, _CHUNK):
            data = memory.read(start, min(_CHUNK, high - start))
            if not len(data):
                break
            words = np.frombuffer(data, np.uint64, len(data) // 8)
            slots = np.minimum(np.searchsorted(ordered, words), len(ordered) - 1)
            for offset in np.flatnonzero(ordered[slots] == words):
                found.setdefault(int(words[offset]), []).append(start + 8 * int(offset))
            del words
    return found


class BlockMinimumsPatch:
    """Made before the session is created (it notes which BlkSum arrays memory already holds: another session's,
    freed pages), applied after: only arrays that appeared while the session loaded are candidates.

    `apply` raises IncompatibleModelError, having written nothing, unless every weight is found exactly once."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._offsets = np.load(self.path)
        self.count = len([name for name in self._offsets.files if name.endswith(".d")])
        self._keys: dict[int, list[int]] = {}
        self._shifts = []
        self._probes = []
        self._longest = 0
        for index in range(self.count):
            order, held, _, length = _weight(self._offsets, index)
            key, shift, probe = _search_key(order, held, length)
            self._keys.setdefault(key, []).append(index)
            self._shifts.append(shift)
            self._probes.append(probe)
            self._longest = max(self._longest, 4 * length)
        self._before = self._find()

    def _find(self) -> dict[int, set[int]]:
        """{weight: start addresses of a bit-identical copy of its (unpatched) BlkSum array}."""
        where: dict[int, set[int]] = {}
        with closing(_Memory(max(_CHUNK, self._longest))) as memory:
            found = _scan(memory, self._keys, private_anonymous_regions())
            for key, indices in self._keys.items():
                for index in indices:
                    # computed again rather than kept from the key pass: all weights' arrays at once are ~50 MB
                    order, held, _, length = _weight(self._offsets, index)
                    probe_at, probe = self._probes[index]
                    for address in set(found.get(key, ())):
                        start = address - self._shifts[index]
                        if int.from_bytes(memory.read(start + probe_at, 8), sys.byteorder) != probe:
                            continue
                        current = np.frombuffer(memory.read(start, 4 * length), np.float32)
                        # bit for bit, padding rows aside
                        if len(current) == length and np.array_equal(
                            current[order].view(np.uint32), held.view(np.uint32)
                        ):
                            where.setdefault(index, set()).add(start)
                        del current
        return where

    def apply(self) -> int:
        """Write every weight's exact minimums over onnxruntime's prepacked BlkSum; returns how many weights.
        Call after the session is created and before it runs."""
        started = time.perf_counter()
        now = self._find()
        where = {index: sorted(now[index] - self._before.get(index, set())) for index in now}
        _require_unique(self.path, self.count, where)
        with closing(_Memory(self._longest, write=True)) as memory:
            for index, (address,) in where.items():
                order, _, exact, length = _weight(self._offsets, index)
                current = np.frombuffer(memory.read(address, 4 * length), np.float32)
                current[order] = exact  # in the shared buffer, then written back
                written = memory.write(address, current.tobytes())
                del current
                if written != 4 * length:
                    raise InferenceError(
                        f"{self.path.parent}: writing the block minimums of weight {index} failed"
                    )
        log.info("exact block minimums for %d weights in %.2f s", self.count, time.perf_counter() - started)
        return self.count


def _require_unique(path: Path, count: int, where: dict[int, list[int]]) -> None:
    missing = [index for index in range(count) if not where.get(index)]
    repeated = [index for index, addresses in where.items() if len(addresses) > 1]
    owners: dict[int, int] = {}
    shared = [i for i, addresses in where.items() for a in addresses if owners.setdefault(a, i) != i]
    if missing or repeated or shared:
        raise IncompatibleModelError(
            f"{path.parent}: of {count} weights' block minimums, {len(missing)} not found, {len(repeated)} found "
            f"more than once and {len(shared)} at another weight's address in the memory onnxruntime "
            f"{ort_version()} allocated while loading (the machine that built this model laid them out "
            "differently); nothing was written. Rebuild the model here, or with `edge-moa model build --portable`"
        )
