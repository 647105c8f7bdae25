"""The board's engine: a built model directory run by a plain ONNX Runtime prefill + decode loop.

Only this module imports onnxruntime. Graphs from onnxruntime-genai's builder (and the tiny test model) use
GroupQueryAttention, which lets past and present KV share one preallocated buffer: each step then writes only the
new token's keys and values in place instead of copying the whole cache (DESIGN.md sec. 6: 60 -> 84 tok/s).
Other graphs (e.g. optimum exports) get the classic loop that feeds each step's present back as the next past.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from ..errors import InferenceError, TooLargeError
from ..model.chat_template import ChatTemplate
from ..model.manifest import Manifest, read_manifest
from .base import ChatMessage, Generation, GenerationRequest

log = logging.getLogger(__name__)

_NUMPY_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


@dataclass(frozen=True)
class Timing:
    """Where the last generation's time went (for benchmarks)."""

    prompt_tokens: int
    new_tokens: int
    prefill_s: float
    decode_s: float


class OnnxEngine:
    """One loaded model. `generate` must run on one thread at a time (the agent's inference thread)."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        threads: int = 0,
        seed: int | None = None,
        share_kv_buffer: bool | None = None,
    ):
        """`share_kv_buffer=None` follows the manifest; False forces the copying loop (for comparisons)."""
        self.model_dir = Path(model_dir)
        self.manifest: Manifest = read_manifest(self.model_dir)
        self.model_id = self.manifest.name
        self.context_length = self.manifest.context_length
        self.kv_bytes_per_token = self.manifest.kv_bytes_per_token
        self.threads = threads
        self.last_timing: Timing | None = None
        self._rng = np.random.default_rng(seed)
        self._eos = frozenset(self.manifest.eos_token_ids)
        self._template = ChatTemplate(
            self.manifest.chat_template, bos_token=self.manifest.bos_token, eos_token=self.manifest.eos_token
        )
        try:
            self._tokenizer = Tokenizer.from_file(str(self.model_dir / self.manifest.tokenizer))
        except Exception as exc:  # tokenizers raises plain Exception subclasses
            raise InferenceError(f"cannot load the tokenizer of {self.model_dir}: {exc}") from exc
        self._session = _create_session(self.model_dir / self.manifest.graph, threads)
        names = {i.name: i for i in self._session.get_inputs()}
        self._past_names = [
            (f"past_key_values.{i}.key", f"past_key_values.{i}.value")
            for i in range(self.manifest.kv.num_layers)
        ]
        self._present_names = [
            (f"present.{i}.key", f"present.{i}.value") for i in range(self.manifest.kv.num_layers)
        ]
        missing = [n for pair in self._past_names for n in pair if n not in names]
        if missing or "input_ids" not in names:
            raise InferenceError(f"{self.model_dir}: the graph lacks inputs {missing or ['input_ids']}")
        self._kv_dtype = _NUMPY_DTYPES.get(names[self._past_names[0][0]].type, np.float32)
        self._has_position_ids = "position_ids" in names
        self._has_attention_mask = "attention_mask" in names
        self._share_buffer = (
            self.manifest.past_present_share_buffer if share_kv_buffer is None else share_kv_buffer
        )
        self._stop_strings = tuple(self.manifest.stop_strings)
        self._lock = threading.Lock()
        log.info(
            "loaded %s from %s (%s, %d threads, shared KV buffer: %s)",
            self.model_id,
            self.model_dir,
            self.manifest.precision,
            threads,
            self._share_buffer,
        )

    # -- text <-> tokens -------------------------------------------------------------------------------------

    def render_prompt(self, messages: tuple[ChatMessage, ...]) -> str:
        return self._template.render(messages, add_generation_prompt=True)

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def count_prompt_tokens(self, messages: tuple[ChatMessage, ...]) -> int:
        return len(self.encode(self.render_prompt(messages)))

    # -- generation ------------------------------------------------------------------------------------------

    def generate(self, request: GenerationRequest) -> Generation:
        started = time.perf_counter()
        prompt_ids = self.encode(self.render_prompt(request.messages))
        new_ids = self.generate_ids(
            prompt_ids,
            max_new_tokens=request.max_new_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed,
        )
        text = self.decode(new_ids)
        for stop in self._stop_strings:  # base models run on into the next "Question:": cut there
            text = text.split(stop, 1)[0]
        return Generation(
            text=text,
            prompt_tokens=len(prompt_ids),
            new_tokens=len(new_ids),
            seconds=time.perf_counter() - started,
        )

    def generate_ids(
        self,
        prompt_ids: list[int],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop_at_eos: bool = True,
    ) -> list[int]:
        """New token ids after `prompt_ids`, without the stop token. Greedy when temperature is 0.

        `stop_at_eos=False` (benchmarks) always generates `max_new_tokens`.
        """
        if max_new_tokens < 1:
            raise InferenceError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
        if not prompt_ids:
            raise InferenceError("empty prompt")
        if len(prompt_ids) + max_new_tokens > self.context_length:
            raise TooLargeError(
                f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({max_new_tokens}) exceed the context of "
                f"{self.model_id} ({self.context_length} tokens)"
            )
        rng = np.random.default_rng(seed) if seed is not None else self._rng
        stop = self._hit_stop_string if self._stop_strings and stop_at_eos else None
        with self._lock:
            try:
                return self._loop(prompt_ids, max_new_tokens, temperature, top_p, rng, stop_at_eos, stop)
            except (InferenceError, KeyboardInterrupt):
                raise
            # onnxruntime's pybind exceptions (Fail, InvalidArgument, ...) and MemoryError
            except Exception as exc:
                raise InferenceError(f"{self.model_id}: inference failed: {exc}") from exc

    def _hit_stop_string(self, out: list[int]) -> bool:
        tail = self.decode(out[-16:])  # a stop string spans a few tokens at most
        return any(stop in tail for stop in self._stop_strings)

    def _loop(self, prompt_ids, max_new_tokens, temperature, top_p, rng, stop_at_eos, stop) -> list[int]:
        capacity = len(prompt_ids) + max_new_tokens
        step = _SharedKvStep(self, capacity) if self._share_buffer else _ConcatKvStep(self)
        t0 = time.perf_counter()
        logits = step.run(np.asarray([prompt_ids], dtype=np.int64), past_len=0)
        t1 = time.perf_counter()
        out: list[int] = []
        total = len(prompt_ids)
        while True:
            token = sample_next(logits, temperature, top_p, rng)
            if stop_at_eos and token in self._eos:
                break
            out.append(token)
            if len(out) >= max_new_tokens or (stop is not None and stop(out)):
                break
            logits = step.run(np.asarray([[token]], dtype=np.int64), past_len=total)
            total += 1
        t2 = time.perf_counter()
        self.last_timing = Timing(len(prompt_ids), len(out), t1 - t0, t2 - t1)
        return out

    def next_token_logits(self, ids: list[int]) -> np.ndarray:
        """Logits over the vocabulary after every prefix of `ids`, shape (len(ids), vocab), for quality checks."""
        with self._lock:
            step = _SharedKvStep(self, len(ids)) if self._share_buffer else _ConcatKvStep(self)
            logits = step.run(np.asarray([ids], dtype=np.int64), past_len=0, all_positions=True)
            if logits.shape[0] == len(ids):
                return logits
            # graphs exported with prune_lm_head give the last position only: feed the text one token at a time
            step = _SharedKvStep(self, len(ids)) if self._share_buffer else _ConcatKvStep(self)
            rows = [
                step.run(np.asarray([[token]], dtype=np.int64), past_len=i).copy()
                for i, token in enumerate(ids)
            ]
            return np.stack(rows)

    def warm_up(self) -> None:
        """One short greedy generation, so the first real request does not pay for allocations."""
        started = time.perf_counter()
        self.generate(
            GenerationRequest(messages=(ChatMessage("user", "Hello"),), max_new_tokens=2, temperature=0)
        )
        log.info("warmed up %s in %.2f s", self.model_id, time.perf_counter() - started)

    def close(self) -> None:
        self._session = None  # type: ignore[assignment]


class _SharedKvStep:
    """Past and present bound to the same preallocated buffers: the graph appends in place (GQA)."""

    def __init__(self, engine: OnnxEngine, capacity: int):
        kv = engine.manifest.kv
        self._engine = engine
        self._binding = engine._session.io_binding()
        shape = (1, kv.num_kv_heads, capacity, kv.head_dim)
        self._binding.bind_output("logits")  # bound first: get_outputs() lists outputs in binding order
        self._buffers = []
        for (past_k, past_v), (pres_k, pres_v) in zip(engine._past_names, engine._present_names):
            for past, present in ((past_k, pres_k), (past_v, pres_v)):
                value = ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, dtype=engine._kv_dtype))
                self._buffers.append(value)
                self._binding.bind_ortvalue_input(past, value)
                self._binding.bind_ortvalue_output(present, value)

    def run(self, ids: np.ndarray, *, past_len: int, all_positions: bool = False) -> np.ndarray:
        engine = self._engine
        total = past_len + ids.shape[1]
        self._binding.bind_cpu_input("input_ids", ids)
        self._binding.bind_output("logits")  # rebound each step: its shape changes from prefill to decode
        if engine._has_attention_mask:
            self._binding.bind_cpu_input("attention_mask", np.ones((1, total), dtype=np.int64))
        if engine._has_position_ids:
            self._binding.bind_cpu_input("position_ids", np.arange(past_len, total, dtype=np.int64)[None, :])
        engine._session.run_with_iobinding(self._binding)
        logits = self._binding.get_outputs()[0].numpy()
        return logits[0] if all_positions else logits[0, -1]


class _ConcatKvStep:
    """The classic loop: each step's present is the next step's past (graphs without GQA)."""

    def __init__(self, engine: OnnxEngine):
        kv = engine.manifest.kv
        self._engine = engine
        empty = np.zeros((1, kv.num_kv_heads, 0, kv.head_dim), dtype=engine._kv_dtype)
        self._past = {name: empty for pair in engine._past_names for name in pair}
        self._outputs = ["logits"] + [name for pair in engine._present_names for name in pair]

    def run(self, ids: np.ndarray, *, past_len: int, all_positions: bool = False) -> np.ndarray:
        engine = self._engine
        total = past_len + ids.shape[1]
        feeds = {"input_ids": ids, **self._past}
        if engine._has_attention_mask:
            feeds["attention_mask"] = np.ones((1, total), dtype=np.int64)
        if engine._has_position_ids:
            feeds["position_ids"] = np.arange(past_len, total, dtype=np.int64)[None, :]
        logits, *presents = engine._session.run(self._outputs, feeds)
        past_names = [name for pair in engine._past_names for name in pair]
        self._past = dict(zip(past_names, presents))
        return logits[0] if all_positions else logits[0, -1]


def sample_next(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """Greedy at temperature 0; otherwise softmax(logits / T) cut to the smallest nucleus of mass >= top_p."""
    if temperature <= 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, top_p)) + 1]
        kept = probs[keep] / probs[keep].sum()
        return int(keep[rng.choice(len(keep), p=kept)])
    return int(rng.choice(len(probs), p=probs))


def _create_session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads if threads > 0 else (os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise InferenceError(f"cannot load {path}: {exc}") from exc
