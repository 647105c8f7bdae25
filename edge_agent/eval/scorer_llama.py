"""A judge run by llama.cpp (llama-cpp-python, the `eval` extra) on a GGUF: one prefill per verdict, no generation.

llama.cpp's AMX kernels (Sapphire Rapids, ggml_backend_amx_mul_mat) crash a `-march=native` build on its first
multi-token decode (DESIGN.md sec. 8): the extra buffer types are turned off before any model loads.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from ..artifact.chat_template import ChatTemplate
from ..engine.base import ChatMessage
from ..errors import ConfigError
from .scorer import log_softmax_at

log = logging.getLogger(__name__)


REBUILD = ("CMAKE_ARGS=\"-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512={avx512} -DGGML_AMX_TILE=OFF "
           "-DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF\" pip install --force-reinstall --no-deps --no-cache-dir "
           "llama-cpp-python")


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.cache
def check_llama_cpp_runs_here() -> None:
    """Import llama-cpp-python in a child first: a build made for another CPU (AVX-512 flags on a CPU without
    them, a -march=native wheel copied between machines) dies of SIGILL in its backend init, which would kill the judge
    with no word; here it becomes an error that says what to rebuild with."""
    probe = subprocess.run([sys.executable, "-c", "import llama_cpp; llama_cpp.llama_backend_init()"],
                           capture_output=True, timeout=120, check=False)
    if probe.returncode == -signal.SIGILL:
        avx512 = "ON" if "avx512f" in cpu_flags() else "OFF"
        message = ("llama-cpp-python was built for instructions this CPU lacks (illegal instruction in its backend init; "
                   f"this CPU has {'' if avx512 == 'ON' else 'no '}AVX-512): rebuild it, e.g. "
                   + REBUILD.format(avx512=avx512))
        raise ConfigError([("--judge", "local", message)])


def import_llama_cpp():
    check_llama_cpp_runs_here()
    try:
        import llama_cpp
    except ImportError:
        message = ("needs llama-cpp-python: pip install 'edge-moa[eval]' "
                   "(or judge with an ONNX board model: --judge local:MODEL_DIR)")
        raise ConfigError([("--judge", "local", message)]) from None
    _disable_extra_buffers(llama_cpp.llama_cpp)
    return llama_cpp


def _disable_extra_buffers(lib) -> None:
    """`use_extra_bufts = False` in every model's default params: the AMX repacking buffers are the crash."""
    original = lib.llama_model_default_params
    if getattr(original, "edge_moa_patched", False):
        return

    def default_params():
        params = original()
        if hasattr(params, "use_extra_bufts"):
            params.use_extra_bufts = False
        return params

    default_params.edge_moa_patched = True  # type: ignore[attr-defined]
    lib.llama_model_default_params = default_params


class LlamaScorer:
    def __init__(self, gguf: Path, *, threads: int = 2, context_tokens: int = 4096):
        llama_cpp = import_llama_cpp()
        self._lib = llama_cpp.llama_cpp
        self.llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=context_tokens, n_threads=threads,
                                   n_threads_batch=threads, n_batch=512, verbose=False)
        self.name = f"llama.cpp:{Path(gguf).stem}"
        source = self.llm.metadata.get("tokenizer.chat_template")
        if not source:
            raise ConfigError([("--judge", str(gguf), "the GGUF has no chat template")])
        self._template = ChatTemplate(source, bos_token=None, eos_token=None)
        self._n_vocab = self.llm.n_vocab()
        self._label_ids: dict[str, int] = {}

    def _token(self, label: str) -> int:
        if label not in self._label_ids:
            ids = self.llm.tokenize(label.encode(), add_bos=False, special=False)
            if len(ids) != 1:
                log.warning("label %r is %d tokens for %s: its first one stands for it", label, len(ids), self.name)
            self._label_ids[label] = ids[0]
        return self._label_ids[label]

    def last_logits(self, turns: list[tuple[str, str]]) -> np.ndarray:
        prompt = self._template.render(tuple(ChatMessage(r, t) for r, t in turns), add_generation_prompt=True)
        tokens = self.llm.tokenize(prompt.encode(), add_bos=True, special=True)
        limit = self.llm.n_ctx() - 1
        if len(tokens) > limit:
            log.warning("judge prompt of %d tokens cut to the context's %d", len(tokens), limit)
            tokens = tokens[-limit:]
        # both orders of a pair share the system prompt and the instruction: keep that much of the KV cache
        cached = self.llm.input_ids[: self.llm.n_tokens].tolist()
        keep = 0
        for a, b in zip(cached, tokens[:-1], strict=False):
            if a != b:
                break
            keep += 1
        self.llm.n_tokens = keep
        self.llm.eval(tokens[keep:])
        pointer = self._lib.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)),
                                     shape=(self._n_vocab,)).copy()

    def label_logprobs(self, turns: list[tuple[str, str]], labels: tuple[str, ...]) -> dict[str, float]:
        values = log_softmax_at(self.last_logits(turns), [self._token(label) for label in labels])
        return dict(zip(labels, values, strict=True))

    def close(self) -> None:
        self.llm.close()
