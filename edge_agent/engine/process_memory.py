"""This process's memory as Linux shows it (/proc/self/maps, madvise): where the loaded model's RAM goes.

The engine uses it once, after loading: the prepacked weights onto huge pages (decode speed), clean file pages
given back and the freed heap returned (peak RSS), and block_offsets.py searches the prepacked weights here.
Everything is a no-op where the interface is missing (not Linux, not glibc).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

_HUGE_PAGE = 2 << 20
_MADV_RANDOM, _MADV_DONTNEED, _MADV_HUGEPAGE, _MADV_COLLAPSE = 1, 4, 14, 25  # Linux; COLLAPSE since 6.1


def _libc_function(name: str, argtypes: list) -> Callable | None:
    try:
        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = argtypes
    return function


def _madvise() -> Callable | None:
    return _libc_function("madvise", [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int])


def private_anonymous_regions() -> list[tuple[int, int]]:
    """(start, end) of every readable and writable private mapping without a file behind it (the heap
    included, stacks and shared maps not); empty where /proc is not there."""
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    regions = []
    for line in maps:
        fields = line.split()
        if fields[1] != "rw-p" or (len(fields) > 5 and fields[5] != "[heap]"):
            continue
        low, high = (int(address, 16) for address in fields[0].split("-"))
        regions.append((low, high))
    return regions


def resident_runs(low: int, high: int) -> list[tuple[int, int]]:
    """(start, end) of the runs of pages in [low, high) that are in RAM. Reading only these does not make the
    kernel allocate the untouched rest (thread stacks, reserved heap); the whole range where mincore fails."""
    page = os.sysconf("SC_PAGE_SIZE")
    vector = (ctypes.c_ubyte * ((high - low) // page))()
    mincore = _libc_function("mincore", [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p])
    if mincore is None or mincore(low, high - low, vector) != 0:
        return [(low, high)]
    resident = np.frombuffer(vector, np.uint8) & 1
    edges = np.flatnonzero(np.diff(np.concatenate(([0], resident, [0]))))
    return [(low + int(a) * page, low + int(b) * page) for a, b in zip(edges[0::2], edges[1::2])]


def weights_on_huge_pages(min_bytes: int = 2 * _HUGE_PAGE) -> int:
    """Move the process's large anonymous memory (onnxruntime's prepacked weights) onto transparent huge pages.

    Decode reads about 100 MB of weights per token; on 4 KB pages the TLB misses cost SmolLM2 20-30 % of its
    decode speed at 1 thread (90 -> 117 tok/s measured, docs/performance.md), and most kernels only give huge
    pages to memory that asks (THP "madvise"). Costs about 0.3 s once. Returns the bytes advised; 0 where the
    kernel or libc cannot (then nothing changes).
    """
    madvise = _madvise()
    if madvise is None:
        return 0
    advised = 0
    for low, high in private_anonymous_regions():  # no files, stacks or shared maps
        start, end = -(-low // _HUGE_PAGE) * _HUGE_PAGE, high // _HUGE_PAGE * _HUGE_PAGE
        if end - start < min_bytes:
            continue
        if madvise(start, end - start, _MADV_HUGEPAGE) == 0:
            madvise(start, end - start, _MADV_COLLAPSE)  # now, not whenever khugepaged gets there
            advised += end - start
    return advised


def release_file_pages(directory: Path) -> int:
    """Mappings of files under `directory`: read page by page from now on (no readahead, no fault-around), and
    pages this process never wrote given back; returns the bytes given back.

    onnxruntime keeps initializers it has folded into prepacked weights (MatMulNBits' scales and zero points,
    17 MB for SmolLM2) mapped from model.onnx.data, and loading read them all; a memory-mapped token table is
    read a few rows at a time, and readahead would map 32 pages around each. Giving a clean page back is always
    safe: read again, it comes back from the file."""
    madvise = _madvise()
    try:
        lines = Path("/proc/self/smaps").read_text().splitlines()
    except OSError:
        lines = []
    if madvise is None or not lines:
        return 0
    prefix = str(Path(directory).resolve()) + os.sep
    dropped, span = 0, None
    for line in lines:
        fields = line.split()
        if "-" in fields[0] and not fields[0].endswith(":"):  # a mapping's header line
            path = fields[5] if len(fields) > 5 else ""
            span = tuple(int(a, 16) for a in fields[0].split("-")) if path.startswith(prefix) else None
            if span:
                madvise(span[0], span[1] - span[0], _MADV_RANDOM)
        elif span and fields[0] == "Anonymous:" and fields[1] == "0":  # no page copied on write
            dropped += (span[1] - span[0]) if madvise(span[0], span[1] - span[0], _MADV_DONTNEED) == 0 else 0
    return dropped


def return_freed_heap() -> None:
    """glibc keeps the heap freed while loading (about 10-25 MB here) in the process: hand it back."""
    trim = _libc_function("malloc_trim", [ctypes.c_size_t])
    if trim is not None:  # not glibc (musl, macOS): nothing to trim
        trim(0)
