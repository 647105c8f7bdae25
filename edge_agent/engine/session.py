"""The one place that creates onnxruntime sessions, runs them and maps onnxruntime's errors to InferenceError.

Every other engine module talks to the graph through `Graph` (names, dtypes, bindings) and never imports
onnxruntime itself: bindings are onnxruntime objects, but only this module creates, fills and runs them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..errors import InferenceError

_NUMPY_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def ort_version() -> str:
    return ort.__version__


@contextmanager
def runtime_errors(what: str) -> Iterator[None]:
    """onnxruntime's pybind exceptions (Fail, InvalidArgument, RuntimeException, ...) and MemoryError as
    InferenceError("<what>: <message>"); the project's own errors and KeyboardInterrupt pass through."""
    try:
        yield
    except (InferenceError, KeyboardInterrupt):
        raise
    except Exception as exc:  # pybind11 maps onnxruntime's C++ exceptions to plain Exception subclasses
        raise InferenceError(f"{what}: {exc}") from exc


def create_session(path: Path, threads: int) -> ort.InferenceSession:
    """The engine's onnxruntime session (threads <= 0: one per core); InferenceError if it does not load."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads if threads > 0 else (os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    with runtime_errors(f"cannot load {path}"):
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


class Graph:
    """A decoder graph's inputs as the KV loops use them: token input, KV pairs, mask and positions.

    `tokens_input` turns ids (batch, seq) into what the graph takes (the ids, or rows of a mapped token table).
    """

    def __init__(self, session: ort.InferenceSession, num_layers: int, tokens_input: Callable | None = None):
        self.session = session
        names = {i.name: i for i in session.get_inputs()}
        self.kv_pairs = [
            pair
            for i in range(num_layers)
            for pair in (
                (f"past_key_values.{i}.key", f"present.{i}.key"),
                (f"past_key_values.{i}.value", f"present.{i}.value"),
            )
        ]
        self.tokens_name = "input_ids" if tokens_input is None else "inputs_embeds"
        missing = [past for past, _ in self.kv_pairs if past not in names]
        if missing or self.tokens_name not in names:
            raise InferenceError(f"the graph lacks inputs {missing or [self.tokens_name]}")
        self.kv_dtype = _NUMPY_DTYPES.get(names[self.kv_pairs[0][0]].type, np.float32)
        self.has_position_ids = "position_ids" in names
        self.has_attention_mask = "attention_mask" in names
        self._tokens_input = tokens_input or (lambda ids: ids)
        vocab = next((o.shape[-1] for o in session.get_outputs() if o.name == "logits"), None)
        self.vocab = vocab if isinstance(vocab, int) else None  # None: a symbolic size, known only from a run

    def bind_kv(self, arrays: list[np.ndarray]) -> ort.IOBinding:
        """A binding whose past and present of each pair are the same array (GQA appends in place)."""
        binding = self.session.io_binding()
        binding.bind_output("logits")  # bound first: get_outputs() lists outputs in binding order
        for (past, present), array in zip(self.kv_pairs, arrays):
            value = ort.OrtValue.ortvalue_from_numpy(array)  # on CPU the OrtValue uses the array's memory
            binding.bind_ortvalue_input(past, value)
            binding.bind_ortvalue_output(present, value)
        return binding

    def logits_buffer(self, binding: ort.IOBinding, rows: int) -> np.ndarray | None:
        """Bind a preallocated (rows, 1, vocab) array as the logits of one-token decode steps, so a step need not
        wrap every bound output (get_outputs: 61 OrtValues, ~1 ms a step for SmolLM2); None when the vocabulary
        size is symbolic."""
        if self.vocab is None:
            return None
        logits = np.empty((rows, 1, self.vocab), dtype=np.float32)
        binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(logits))
        return logits

    def run_bound(
        self,
        binding: ort.IOBinding,
        ids: np.ndarray,
        mask: np.ndarray,
        positions: np.ndarray,
        logits: np.ndarray | None = None,
    ):
        """Run with KV bound in place: ids, mask and positions (batch, seq) int64; the logits array (`logits`
        itself when it was bound by logits_buffer)."""
        binding.bind_cpu_input(self.tokens_name, self._tokens_input(ids))
        if logits is None:
            binding.bind_output("logits")  # rebound each run: its shape changes from prefill to decode
        if self.has_attention_mask:
            binding.bind_cpu_input("attention_mask", mask)
        if self.has_position_ids:
            binding.bind_cpu_input("position_ids", positions)
        self.session.run_with_iobinding(binding)
        return logits if logits is not None else binding.get_outputs()[0].numpy()

    def run_fed(self, ids: np.ndarray, past: dict[str, np.ndarray], mask: np.ndarray, positions: np.ndarray):
        """Run with KV fed and fetched (graphs without a shared buffer): (logits, {past name: present})."""
        feeds = {self.tokens_name: self._tokens_input(ids), **past}
        if self.has_attention_mask:
            feeds["attention_mask"] = mask
        if self.has_position_ids:
            feeds["position_ids"] = positions
        logits, *presents = self.session.run(["logits"] + [present for _, present in self.kv_pairs], feeds)
        return logits, {past_name: value for (past_name, _), value in zip(self.kv_pairs, presents)}
