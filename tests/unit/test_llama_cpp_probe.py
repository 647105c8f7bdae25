"""A llama-cpp-python build for another CPU dies of SIGILL: the judge says what to rebuild instead of dying."""

import signal

import pytest

from edge_agent.errors import ConfigError
from edge_agent.eval.scorer_llama import check_llama_cpp_runs_here


def fake_llama_cpp(tmp_path, monkeypatch, backend_init: str) -> None:
    (tmp_path / "llama_cpp.py").write_text(f"import os, signal\n\ndef llama_backend_init():\n    {backend_init}\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the probe is a child: it imports this one first
    check_llama_cpp_runs_here.cache_clear()


def test_a_build_that_dies_of_sigill_is_a_clear_error(tmp_path, monkeypatch):
    fake_llama_cpp(tmp_path, monkeypatch, f"os.kill(os.getpid(), {int(signal.SIGILL)})")
    with pytest.raises(ConfigError) as raised:
        check_llama_cpp_runs_here()
    message = str(raised.value)
    assert "illegal instruction" in message and "-DGGML_NATIVE=OFF" in message and "--force-reinstall" in message
    check_llama_cpp_runs_here.cache_clear()


def test_a_build_that_runs_passes_and_other_failures_are_left_to_the_import(tmp_path, monkeypatch):
    fake_llama_cpp(tmp_path, monkeypatch, "pass")
    check_llama_cpp_runs_here()
    fake_llama_cpp(tmp_path, monkeypatch, "raise RuntimeError('other')")
    check_llama_cpp_runs_here()  # not a CPU mismatch: the in-process import reports it as it is
    check_llama_cpp_runs_here.cache_clear()
