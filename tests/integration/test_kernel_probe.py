"""The kernel probe a tuned build carries (model/kernel_probe.py) and its check before a tuned model loads
(engine/kernel_probe.py): the patched 4-bit kernel must be exact for one row (a decode step) and for several."""

import dataclasses
import platform
from pathlib import Path

import numpy as np
import pytest

from edge_agent.artifact.manifest import KERNEL_PROBE_FILES, read_manifest
from edge_agent.engine import kernel_probe
from edge_agent.engine.fast_path import load_session
from edge_agent.engine.machine import cpu_features
from edge_agent.errors import IncompatibleModelError
from edge_agent.model.kernel_probe import write_kernel_probe

# the layout the patch writes is MLAS's x86 one (engine/block_offsets.py): elsewhere it is not found at all
pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="the patched layout is x86 MLAS's")
# onnxruntime 1.32's x86 dispatch: with AVX-512 the one-row kernel reads the patched BlkSum, with AVX2 only it
# applies the integer zero points itself (engine/kernel_probe.py)
ONE_ROW_PATCHABLE = "avx512f" in cpu_features()


def _other_product(model_dir: Path) -> None:
    """Make the probe's expected product another than its graph's: the nibbles it checks against, inverted (its
    d, z and m, by which the patch finds and fixes the kernel's array, stay)."""
    path = model_dir / KERNEL_PROBE_FILES[1]
    with np.load(path) as data:
        arrays = dict(data)
    arrays["q"] = (15 - arrays["q"]).astype(np.uint8)
    with open(path, "wb") as file:
        np.savez(file, **arrays)


def test_the_probe_finds_what_this_cpus_one_row_kernel_does(tmp_path: Path):
    files = write_kernel_probe(tmp_path)
    if ONE_ROW_PATCHABLE:
        kernel_probe.check_kernel(tmp_path, files)
    else:
        with pytest.raises(IncompatibleModelError, match=r"kernel for 1 row\(s\) does not take.*--portable"):
            kernel_probe.check_kernel(tmp_path, files)


def test_a_product_off_the_exact_one_is_refused_on_any_cpu(tmp_path: Path, monkeypatch):
    files = write_kernel_probe(tmp_path)
    monkeypatch.setattr(kernel_probe, "PROBE_ROWS", (3,))
    kernel_probe.check_kernel(tmp_path, files)  # right minimums: exact on every CPU for several rows

    _other_product(tmp_path)
    with pytest.raises(IncompatibleModelError, match=r"kernel for 3 row\(s\) does not take"):
        kernel_probe.check_kernel(tmp_path, files)


def test_a_tuned_model_whose_probe_fails_is_refused_before_its_graph_loads(default_model_dir: Path, tmp_path):
    manifest = dataclasses.replace(
        read_manifest(default_model_dir),
        block_offsets="block_offsets.npz",
        graph="absent.onnx",  # loading it would be an InferenceError: the probe comes first
        kernel_probe=write_kernel_probe(tmp_path),
        onnxruntime="",
        cpu_features=(),
    )
    _other_product(tmp_path)
    with pytest.raises(IncompatibleModelError, match="does not take the exact block minimums") as refused:
        load_session(tmp_path, manifest, threads=1)
    assert refused.value.exit_code == 78


@pytest.mark.slow
def test_the_default_build_is_tuned_only_where_the_probe_passes(default_model_dir: Path, tmp_path: Path):
    """The build ran the same probe: tuned (carrying it) where it passed, portable where it did not."""
    manifest = read_manifest(default_model_dir)
    try:
        kernel_probe.check_kernel(tmp_path, write_kernel_probe(tmp_path))
        passes = True
    except IncompatibleModelError:
        passes = False
    assert bool(manifest.block_offsets) == passes
    assert manifest.kernel_probe == (KERNEL_PROBE_FILES if passes else ())
    for name in manifest.kernel_probe:
        assert name in manifest.files
