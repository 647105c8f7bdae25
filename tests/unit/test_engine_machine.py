"""What a tuned build records about its machine, and the reference logits it is checked against."""

import platform

import numpy as np

from edge_agent.artifact.reference import ReferenceLogits, mean_kl
from edge_agent.engine import machine
from edge_agent.engine.session import ort_version

CPUINFO = """processor\t: 0
flags\t\t: fpu sse2 avx2 fma avx512f avx512bw avx512vl avx512_vnni amx_tile amx_int8 amx_bf16
processor\t: 1
flags\t\t: fpu sse2 avx2 fma avx512f avx512bw avx512vl avx512_vnni amx_tile amx_int8 amx_bf16
"""


def test_cpu_features_keep_the_flags_mlas_dispatches_on():
    assert machine.cpu_features(CPUINFO) == (
        platform.machine(), "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "amx_tile", "amx_int8",
    )  # fmt: skip
    assert machine.cpu_features("Features\t: fp asimd asimddp i8mm\n")[1:] == ("asimddp", "i8mm")


def test_differences_name_what_changed():
    here = machine.cpu_features()
    assert machine.differences(ort_version(), here) == []
    assert machine.differences("", ()) == []  # an old build recorded nothing
    changed = machine.differences("1.0.0", (here[0], "sve"))
    assert changed[0] == f"onnxruntime {ort_version()} here, 1.0.0 at build"
    assert "'sve'" in changed[1]


def test_reference_logits_round_trip_and_kl(tmp_path):
    ids = ReferenceLogits.fixed_ids(1000)
    assert np.array_equal(ids, ReferenceLogits.fixed_ids(1000)) and ids.max() < 1000
    logits = np.random.default_rng(0).normal(size=(4, 1000)).astype(np.float32)
    ReferenceLogits(ids, np.array([8, 16, 24, 32]), logits).write(tmp_path / "r.npz")
    back = ReferenceLogits.read(tmp_path / "r.npz")
    assert np.array_equal(back.logits, logits) and back.lengths.tolist() == [8, 16, 24, 32]
    assert mean_kl(logits, logits) == 0.0
    uniform = np.zeros_like(logits)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    expected = np.mean(np.sum(p * np.log(p * 1000), axis=1))  # KL(p || uniform) = sum p log(p / (1/V))
    assert np.isclose(mean_kl(logits, uniform), expected)
