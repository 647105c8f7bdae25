"""The board's engine: a built model directory run by a plain ONNX Runtime prefill + decode loop.

Only this module imports onnxruntime. Graphs from onnxruntime-genai's builder (and the tiny test model) use
GroupQueryAttention, which lets past and present KV share one preallocated buffer: each step then writes only the
new token's keys and values in place instead of copying the whole cache (DESIGN.md sec. 6: 60 -> 84 tok/s).
Other graphs (e.g. optimum exports) get the classic loop that feeds each step's present back as the next past.

`generate_batch` decodes up to `max_batch` requests together (DESIGN.md sec. 4: b tasks in about alpha(b) instead
of b * alpha): each prompt is prefilled alone into its row of a (b, kv_heads, capacity, head_dim) buffer, then
one decode step per token serves every row, each row's length carried by its own attention_mask row.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from ..errors import InferenceError, TooLargeError
from ..model.chat_template import ChatTemplate
from ..model.manifest import Manifest, read_manifest
from .base import ChatMessage, Generation, GenerationRequest
from .block_offsets import patch_block_minimums
from .generation import Sequence, TextStream, final_text, sample_next
from .process_memory import release_file_pages, return_freed_heap, weights_on_huge_pages

log = logging.getLogger(__name__)
_LOADING = threading.Lock()

_NUMPY_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
# generate_batch drops finished rows from the batch when the longest live row has at least this many steps left
_COMPACT_MIN_STEPS = 8


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
        max_batch: int = 4,
        huge_pages: bool = True,
    ):
        """`share_kv_buffer=None` follows the manifest; False forces the copying loop (for comparisons).
        `huge_pages`: back the loaded weights with transparent huge pages (Linux; process_memory.py says why).

        `max_batch`: the most requests `generate_batch` decodes together (1 disables batching). Graphs without the
        shared KV buffer always run one request at a time (their max_batch is 1).
        """
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be an integer >= 1, not {max_batch!r}")
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
        # the session first: its loading transient (weights read, then prepacked) peaks before the tokenizer
        # adds its own; what both freed goes back to the system (peak RSS, issue 3)
        with _LOADING:  # one load at a time: a patch must meet its own session's buffers, not another's
            self._session = create_session(self.model_dir / self.manifest.graph, threads)
            if self.manifest.block_offsets:  # before anything runs: the graph alone has approximate offsets
                patch_block_minimums(self.model_dir / self.manifest.block_offsets)
        self._embeddings = (
            _MappedEmbeddings(self.model_dir, self.manifest.embeddings) if self.manifest.embeddings else None
        )
        release_file_pages(self.model_dir)
        try:
            self._tokenizer = Tokenizer.from_file(str(self.model_dir / self.manifest.tokenizer))
        except Exception as exc:  # tokenizers raises plain Exception subclasses
            raise InferenceError(f"cannot load the tokenizer of {self.model_dir}: {exc}") from exc
        return_freed_heap()
        if huge_pages:
            weights_on_huge_pages()
        names = {i.name: i for i in self._session.get_inputs()}
        self._past_names = [
            (f"past_key_values.{i}.key", f"past_key_values.{i}.value")
            for i in range(self.manifest.kv.num_layers)
        ]
        self._present_names = [
            (f"present.{i}.key", f"present.{i}.value") for i in range(self.manifest.kv.num_layers)
        ]
        self._tokens_name = "inputs_embeds" if self._embeddings else "input_ids"
        missing = [n for pair in self._past_names for n in pair if n not in names]
        if missing or self._tokens_name not in names:
            raise InferenceError(f"{self.model_dir}: the graph lacks inputs {missing or [self._tokens_name]}")
        self._kv_dtype = _NUMPY_DTYPES.get(names[self._past_names[0][0]].type, np.float32)
        self._has_position_ids = "position_ids" in names
        self._has_attention_mask = "attention_mask" in names
        self._share_buffer = (
            self.manifest.past_present_share_buffer if share_kv_buffer is None else share_kv_buffer
        )
        self._stop_strings = tuple(self.manifest.stop_strings)
        # batched decode needs GQA's per-row lengths (seqlens_k from attention_mask) and the in-place buffer
        self.max_batch = max_batch if self._share_buffer and self._has_attention_mask else 1
        self._pad_id = min(self._eos) if self._eos else 0
        self._lock = threading.Lock()
        log.info(
            "loaded %s from %s (%s, %d threads, shared KV buffer: %s, max batch %d)",
            self.model_id,
            self.model_dir,
            self.manifest.precision,
            threads,
            self._share_buffer,
            self.max_batch,
        )

    def _tokens_input(self, ids: np.ndarray) -> np.ndarray:
        """What the graph takes for token ids (batch, seq): the ids, or their rows of the mapped table."""
        return self._embeddings.rows(ids) if self._embeddings else ids

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

    streams = True  # generate(request, on_delta) hands the text over a few tokens at a time

    def generate(self, request: GenerationRequest, on_delta: Callable[[str], None] | None = None) -> Generation:
        """One request; `on_delta(text)` (optional, called on this thread) gets the answer as it is decoded, in
        pieces that join to the returned text."""
        started = time.perf_counter()
        prompt_ids = self._prompt_ids(request.messages)
        self._check(prompt_ids, request.max_new_tokens)
        stream = TextStream(self.decode, self._stop_strings, on_delta) if on_delta is not None else None
        seq = self._sequence(request, prompt_ids, stream=stream)
        with self._lock:
            try:
                self._loop(seq)
            except (InferenceError, KeyboardInterrupt):
                raise
            except Exception as exc:  # onnxruntime's pybind exceptions (Fail, InvalidArgument, ...), MemoryError
                raise InferenceError(f"{self.model_id}: inference failed: {exc}") from exc
        text = self._text(seq.out)
        if stream is not None:
            stream.finish(text)
        return Generation(
            text=text, prompt_tokens=len(prompt_ids), new_tokens=len(seq.out), seconds=time.perf_counter() - started
        )

    def _sequence(self, request: GenerationRequest, prompt_ids: list[int], *, stream: TextStream | None = None,
                  stop_at_eos: bool = True, rng: np.random.Generator | None = None) -> Sequence:
        if rng is None:
            rng = np.random.default_rng(request.seed) if request.seed is not None else self._rng
        stop = self._hit_stop_string if self._stop_strings else None
        return Sequence(request, prompt_ids, rng, eos=self._eos, stop=stop, stream=stream, stop_at_eos=stop_at_eos)

    def generate_batch(
        self, requests: list[GenerationRequest], *, stop_at_eos: bool = True
    ) -> list[Generation | Exception]:
        """One result per request, in order: its Generation, or the InferenceError / TooLargeError it raised.

        Valid requests are decoded together, `max_batch` at a time (a longer list runs in successive batches).
        Each row stops at its own EOS, stop string or max_new_tokens. A finished row leaves the batch (the live
        rows' KV is copied into a smaller buffer) when the longest live row still has 8 or more steps to go;
        otherwise it stays to the end, fed a pad token at a frozen slot. Greedy rows give exactly what
        `generate` gives; so does a seeded sampled row (each row draws from its own generator).
        `Generation.seconds` of every result is the wall time of the whole call (what the caller waited for all
        of them). A failure of the runtime itself fails every row of that batch. `stop_at_eos=False`
        (benchmarks) runs every row to its max_new_tokens.
        """
        started = time.perf_counter()
        results: list[Generation | Exception | None] = [None] * len(requests)
        valid: list[tuple[int, list[int], GenerationRequest]] = []
        for index, request in enumerate(requests):
            try:
                prompt_ids = self._prompt_ids(request.messages)
                self._check(prompt_ids, request.max_new_tokens)
            except InferenceError as exc:
                results[index] = exc
            else:
                valid.append((index, prompt_ids, request))
        texts: dict[int, tuple[list[int], list[int]]] = {}
        for first in range(0, len(valid), self.max_batch):
            chunk = valid[first : first + self.max_batch]
            try:
                new_ids = self._run_batch(chunk, stop_at_eos)
            except InferenceError as exc:
                for index, _, _ in chunk:
                    results[index] = exc
                continue
            for (index, prompt_ids, _), ids in zip(chunk, new_ids):
                texts[index] = (prompt_ids, ids)
        seconds = time.perf_counter() - started
        for index, (prompt_ids, ids) in texts.items():
            results[index] = Generation(
                text=self._text(ids), prompt_tokens=len(prompt_ids), new_tokens=len(ids), seconds=seconds
            )
        return results  # type: ignore[return-value]  # every slot is filled above

    def _prompt_ids(self, messages: tuple[ChatMessage, ...]) -> list[int]:
        try:
            return self.encode(self.render_prompt(messages))
        except Exception as exc:  # the template or the tokenizer choked on this request's text alone
            raise InferenceError(f"{self.model_id}: cannot render or tokenize the request: {exc}") from exc

    def _run_batch(self, chunk, stop_at_eos: bool) -> list[list[int]]:
        rngs = [np.random.default_rng(r.seed) if r.seed is not None else self._rng for _, _, r in chunk]
        stop = self._hit_stop_string if self._stop_strings and stop_at_eos else None
        with self._lock:
            try:
                if len(chunk) == 1:  # the single-request loop: no batch buffer to build
                    (_, ids, r), rng = chunk[0], rngs[0]
                    seq = self._sequence(r, ids, stop_at_eos=stop_at_eos, rng=rng)
                    self._loop(seq)
                    return [seq.out]
                return self._batch_loop(chunk, rngs, stop_at_eos, stop)
            except (InferenceError, KeyboardInterrupt):
                raise
            except Exception as exc:  # onnxruntime's pybind exceptions and MemoryError, as in generate_ids
                raise InferenceError(f"{self.model_id}: batched inference failed: {exc}") from exc

    def _batch_loop(self, chunk, rngs, stop_at_eos, stop) -> list[list[int]]:
        prompts = [prompt_ids for _, prompt_ids, _ in chunk]
        requests = [r for _, _, r in chunk]
        cache = _BatchKvCache(
            self, len(chunk), max(len(p) + r.max_new_tokens for p, r in zip(prompts, requests))
        )
        t0 = time.perf_counter()
        logits = [cache.prefill_row(row, ids) for row, ids in enumerate(prompts)]
        t1 = time.perf_counter()
        lengths = [len(p) for p in prompts]  # tokens in each request's cache row
        outs: list[list[int]] = [[] for _ in chunk]
        done = [False] * len(chunk)
        rows = list(range(len(chunk)))  # rows[r]: the request in cache row r
        while True:
            for i in rows:
                if done[i]:
                    continue
                token = sample_next(logits[i], requests[i].temperature, requests[i].top_p, rngs[i])
                if stop_at_eos and token in self._eos:
                    done[i] = True
                    continue
                outs[i].append(token)
                if len(outs[i]) >= requests[i].max_new_tokens or (stop is not None and stop(outs[i])):
                    done[i] = True
            live = [i for i in rows if not done[i]]
            if not live:
                break
            left = max(requests[i].max_new_tokens - len(outs[i]) for i in live)
            if len(live) < len(rows) and left >= _COMPACT_MIN_STEPS:
                # drop finished rows: copying the live rows' filled KV costs less than a step
                cache.keep(
                    [r for r, i in enumerate(rows) if not done[i]],
                    filled=max(lengths[i] for i in live),
                    capacity=max(len(prompts[i]) + requests[i].max_new_tokens for i in live),
                )
                rows = live
            # a finished row left in the batch is fed a pad token at a frozen slot: it changes no other row
            step = cache.decode(
                [self._pad_id if done[i] else outs[i][-1] for i in rows], [lengths[i] for i in rows]
            )
            for r, i in enumerate(rows):
                if not done[i]:
                    logits[i] = step[r]
                    lengths[i] += 1
        t2 = time.perf_counter()
        self.last_timing = Timing(sum(map(len, prompts)), sum(map(len, outs)), t1 - t0, t2 - t1)
        return outs

    def _check(self, prompt_ids: list[int], max_new_tokens: int) -> None:
        if max_new_tokens < 1:
            raise InferenceError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
        if not prompt_ids:
            raise InferenceError("empty prompt")
        if len(prompt_ids) + max_new_tokens > self.context_length:
            raise TooLargeError(
                f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({max_new_tokens}) exceed the context of "
                f"{self.model_id} ({self.context_length} tokens)"
            )

    def _text(self, new_ids: list[int]) -> str:
        return final_text(self.decode(new_ids), self._stop_strings)

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
        self._check(prompt_ids, max_new_tokens)
        request = GenerationRequest(messages=(), max_new_tokens=max_new_tokens, temperature=temperature,
                                    top_p=top_p, seed=seed)
        seq = self._sequence(request, list(prompt_ids), stop_at_eos=stop_at_eos)
        with self._lock:
            try:
                self._loop(seq)
            except (InferenceError, KeyboardInterrupt):
                raise
            # onnxruntime's pybind exceptions (Fail, InvalidArgument, ...) and MemoryError
            except Exception as exc:
                raise InferenceError(f"{self.model_id}: inference failed: {exc}") from exc
        return seq.out

    def _hit_stop_string(self, out: list[int]) -> bool:
        tail = self.decode(out[-16:])  # a stop string spans a few tokens at most
        return any(stop in tail for stop in self._stop_strings)

    def _loop(self, seq: Sequence) -> None:
        prompt_ids = seq.prompt_ids
        step = _SharedKvStep(self, seq.capacity) if self._share_buffer else _ConcatKvStep(self)
        t0 = time.perf_counter()
        logits = step.run(np.asarray([prompt_ids], dtype=np.int64), past_len=0)
        t1 = time.perf_counter()
        total = len(prompt_ids)
        while seq.choose(logits):
            logits = step.run(np.asarray([[seq.out[-1]]], dtype=np.int64), past_len=total)
            total += 1
        t2 = time.perf_counter()
        self.last_timing = Timing(len(prompt_ids), len(seq.out), t1 - t0, t2 - t1)

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
        """One short greedy generation (and a batch of two when batching), so the first real request does not
        pay for allocations."""
        started = time.perf_counter()
        hello = GenerationRequest(messages=(ChatMessage("user", "Hello"),), max_new_tokens=2, temperature=0)
        self.generate(hello)
        if self.max_batch > 1:
            self.generate_batch([hello, hello])
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
        self._binding.bind_cpu_input(engine._tokens_name, engine._tokens_input(ids))
        self._binding.bind_output("logits")  # rebound each step: its shape changes from prefill to decode
        if engine._has_attention_mask:
            self._binding.bind_cpu_input("attention_mask", np.ones((1, total), dtype=np.int64))
        if engine._has_position_ids:
            self._binding.bind_cpu_input("position_ids", np.arange(past_len, total, dtype=np.int64)[None, :])
        engine._session.run_with_iobinding(self._binding)
        logits = self._binding.get_outputs()[0].numpy()
        return logits[0] if all_positions else logits[0, -1]


class _BatchKvCache:
    """b rows of KV in one preallocated buffer per past/present pair: prefill one row at a time, decode all rows.

    Each prompt is prefilled alone, bound to its own row (a contiguous view of the buffer): no padded prefill, so
    a row's cache and first logits are bit-identical to a solo run, and the builder's graphs (whose lm_head is
    pruned to the last position) never return a pad position's logits. Decode then feeds one token per row with
    a right-padded attention_mask: GQA takes each row's length from its mask (seqlens_k = row sum - 1), writes
    the new key/value at that slot and attends to that row's own slots only, whatever the mask width
    (onnxruntime GroupQueryAttention, CPU, shared past/present buffer).
    """

    def __init__(self, engine: OnnxEngine, rows: int, capacity: int):
        kv = engine.manifest.kv
        self._engine = engine
        self._pairs = [
            pair
            for (past_k, past_v), (pres_k, pres_v) in zip(engine._past_names, engine._present_names)
            for pair in ((past_k, pres_k), (past_v, pres_v))
        ]
        shape = (rows, kv.num_kv_heads, capacity, kv.head_dim)
        # the memory that the whole-batch binding and each row's prefill binding share
        self._arrays = [np.zeros(shape, dtype=engine._kv_dtype) for _ in self._pairs]
        self._binding = self._bind(self._arrays)

    def _bind(self, arrays: list[np.ndarray]):
        binding = self._engine._session.io_binding()
        binding.bind_output("logits")  # bound first: get_outputs() lists outputs in binding order
        for (past, present), array in zip(self._pairs, arrays):
            value = ort.OrtValue.ortvalue_from_numpy(array)  # on CPU the OrtValue uses the array's memory
            binding.bind_ortvalue_input(past, value)
            binding.bind_ortvalue_output(present, value)
        return binding

    def keep(self, rows: list[int], *, filled: int, capacity: int) -> None:
        """Keep only `rows` (in that order), their first `filled` slots copied into buffers of `capacity`."""
        kept = []
        for array in self._arrays:
            new = np.zeros((len(rows), array.shape[1], capacity, array.shape[3]), dtype=array.dtype)
            new[:, :, :filled] = array[rows, :, :filled]
            kept.append(new)
        self._arrays = kept
        self._binding = self._bind(kept)

    def prefill_row(self, row: int, ids: list[int]) -> np.ndarray:
        """Run the prompt of `row` alone into its slice of the buffer; the logits after its last token."""
        engine = self._engine
        binding = self._bind([array[row : row + 1] for array in self._arrays])
        binding.bind_cpu_input(engine._tokens_name, engine._tokens_input(np.asarray([ids], dtype=np.int64)))
        binding.bind_output("logits")
        if engine._has_attention_mask:
            binding.bind_cpu_input("attention_mask", np.ones((1, len(ids)), dtype=np.int64))
        if engine._has_position_ids:
            binding.bind_cpu_input("position_ids", np.arange(len(ids), dtype=np.int64)[None, :])
        engine._session.run_with_iobinding(binding)
        return binding.get_outputs()[0].numpy()[0, -1].copy()

    def decode(self, tokens: list[int], lengths: list[int]) -> np.ndarray:
        """One step: `tokens[r]` goes to slot `lengths[r]` of row r; logits (rows, vocab) after it."""
        engine = self._engine
        width = max(lengths) + 1
        mask = (np.arange(width)[None, :] <= np.asarray(lengths)[:, None]).astype(np.int64)
        tokens_input = engine._tokens_input(np.asarray(tokens, dtype=np.int64)[:, None])
        self._binding.bind_cpu_input(engine._tokens_name, tokens_input)
        self._binding.bind_output("logits")
        if engine._has_attention_mask:
            self._binding.bind_cpu_input("attention_mask", mask)
        if engine._has_position_ids:
            self._binding.bind_cpu_input("position_ids", np.asarray(lengths, dtype=np.int64)[:, None])
        engine._session.run_with_iobinding(self._binding)
        return self._binding.get_outputs()[0].numpy()[:, -1]


class _MappedEmbeddings:
    """The token table read from disk as used: SmolLM2's 49k x 576 Q8_0 table (28 MB) is never loaded whole.

    Rows are `q * d` per block of 32 in float32, what GatherBlockQuantized computes inside the graph.
    """

    def __init__(self, model_dir: Path, files: tuple[str, ...]):
        try:
            self._q = np.load(model_dir / files[0], mmap_mode="r")  # int8 [vocab, hidden]
            self._scales = np.load(model_dir / files[1], mmap_mode="r")  # float16 [vocab, hidden / 32]
        except (OSError, ValueError, IndexError) as exc:
            raise InferenceError(f"cannot map the token table of {model_dir}: {exc}") from exc

    def rows(self, ids: np.ndarray) -> np.ndarray:
        q = np.asarray(self._q[ids.reshape(-1)], dtype=np.float32)
        scales = np.asarray(self._scales[ids.reshape(-1)], dtype=np.float32)
        rows = q.reshape(len(q), scales.shape[1], -1) * scales[..., None]
        return rows.reshape(*ids.shape, q.shape[1])


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
        feeds = {engine._tokens_name: engine._tokens_input(ids), **self._past}
        if engine._has_attention_mask:
            feeds["attention_mask"] = np.ones((1, total), dtype=np.int64)
        if engine._has_position_ids:
            feeds["position_ids"] = np.arange(past_len, total, dtype=np.int64)[None, :]
        logits, *presents = engine._session.run(self._outputs, feeds)
        past_names = [name for pair in engine._past_names for name in pair]
        self._past = dict(zip(past_names, presents))
        return logits[0] if all_positions else logits[0, -1]


def create_session(path: Path, threads: int) -> ort.InferenceSession:
    """The engine's onnxruntime session (threads <= 0: one per core); InferenceError if it does not load."""
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
