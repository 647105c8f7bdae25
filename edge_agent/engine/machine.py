"""What a tuned build depends on: the onnxruntime version and the CPU features its kernels dispatch on."""

from __future__ import annotations

import platform
from pathlib import Path

from .session import ort_version

# the flags MLAS picks its 4-bit kernels by (x86: AVX2 / AVX-512 / VNNI / AMX; ARM: dot product, i8mm, SVE)
_RELEVANT = (
    "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8",
    "asimddp", "i8mm", "sve",
)  # fmt: skip


def cpu_features(cpuinfo: str | None = None) -> tuple[str, ...]:
    """The machine's architecture and the relevant CPU flags it has, e.g. ("x86_64", "avx2", "avx512f", ...)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return (platform.machine(), *[flag for flag in _RELEVANT if flag in flags])


def differences(onnxruntime: str, features: tuple[str, ...]) -> list[str]:
    """How this machine differs from the recorded one ([] when alike or when nothing was recorded)."""
    found = []
    if onnxruntime and onnxruntime != ort_version():
        found.append(f"onnxruntime {ort_version()} here, {onnxruntime} at build")
    if features and tuple(features) != cpu_features():
        here, there = set(cpu_features()), set(features)
        found.append(f"CPU features {sorted(here - there)} only here, {sorted(there - here)} only at build")
    return found
