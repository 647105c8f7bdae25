"""The board's engine: a built model directory run by a plain ONNX Runtime prefill + decode loop.

Graphs from onnxruntime-genai's builder (and the tiny test model) use GroupQueryAttention, which lets past and
present KV share one preallocated buffer: each step then writes only the new token's keys and values in place
instead of copying the whole cache (DESIGN.md sec. 6: 60 -> 84 tok/s), and rows of that buffer are decoded
together (continuous batching, batch.py). Other graphs (e.g. optimum exports) get the classic loop that feeds
each step's present back as the next past, one request at a time.

Modules: session.py (onnxruntime, its errors), kv_cache.py (buffers and bindings), batch.py (who decodes in which
step), generation.py (sampling, stop rules, streamed text); this one turns requests into sequences and back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from ..artifact.chat_template import ChatTemplate
from ..artifact.manifest import Manifest, read_manifest
from ..errors import InferenceError, TooLargeError
from .base import ChatMessage, Generation, GenerationRequest
from .batch import ContinuousBatch, offer_prefix, prefill_chunks, resume_from_prefix
from .embeddings import MappedEmbeddings
from .fast_path import check_patched, load_session
from .generation import Sequence, TextStream, final_text, sample_next
from .kv_cache import ConcatKvCache, RowKvCache, round_capacity
from .label_scores import LabelScores, keep_the_end, log_softmax_at
from .prefix_cache import PrefixCache
from .process_memory import release_file_pages, return_freed_heap, weights_on_huge_pages
from .session import Graph, create_session, runtime_errors

__all__ = ["OnnxEngine", "Timing", "create_session", "sample_next"]

log = logging.getLogger(__name__)
PREFILL_CHUNK = 64  # tokens of a newcomer's prompt run per step: what it can stall the decoding rows for


@dataclass(frozen=True)
class Timing:
    """Where the last generation's time went (for benchmarks)."""

    prompt_tokens: int
    new_tokens: int
    prefill_s: float
    decode_s: float


class OnnxEngine:
    """One loaded model. Generation must run on one thread at a time (the agent's inference thread)."""

    streams = True  # generate(request, on_delta) hands the text over a few tokens at a time

    def __init__(
        self,
        model_dir: str | Path,
        *,
        threads: int = 0,
        seed: int | None = None,
        share_kv_buffer: bool | None = None,
        max_batch: int = 4,
        huge_pages: bool = True,
        prefill_chunk: int = PREFILL_CHUNK,
        prefix_cache_bytes: int = 32 << 20,
    ):
        """`share_kv_buffer=None` follows the manifest; False forces the copying loop (for comparisons).
        `huge_pages`: back the loaded weights with transparent huge pages (Linux; process_memory.py says why).

        `max_batch`: the most requests decoded together (1 disables batching). Graphs without the shared KV
        buffer always run one request at a time (their max_batch is 1).
        `prefix_cache_bytes`: KV of prompt prefixes kept between requests (prefix_cache.py; 0 = off); exact,
        graphs with the shared KV buffer only.
        """
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be an integer >= 1, not {max_batch!r}")
        if prefill_chunk < 2:
            raise ValueError(f"prefill_chunk must be at least 2 tokens, not {prefill_chunk!r}")
        self.model_dir = Path(model_dir)
        self.manifest: Manifest = read_manifest(self.model_dir)
        self.model_id = self.manifest.name
        self.context_length = self.manifest.context_length
        self.kv_bytes_per_token = self.manifest.kv_bytes_per_token
        self.threads = threads
        self.prefill_chunk = prefill_chunk
        self.last_timing: Timing | None = None
        self._rng = np.random.default_rng(seed)
        self._eos = frozenset(self.manifest.eos_token_ids)
        self._template = ChatTemplate(
            self.manifest.chat_template, bos_token=self.manifest.bos_token, eos_token=self.manifest.eos_token
        )
        # the session first: its loading transient (weights read, then prepacked) peaks before the tokenizer
        # adds its own; what both freed goes back to the system (peak RSS, issue 3)
        session = load_session(self.model_dir, self.manifest, threads)
        embeddings = (
            MappedEmbeddings(self.model_dir, self.manifest.embeddings) if self.manifest.embeddings else None
        )
        release_file_pages(self.model_dir)
        try:
            self._tokenizer = Tokenizer.from_file(str(self.model_dir / self.manifest.tokenizer))
        except Exception as exc:  # tokenizers raises plain Exception subclasses
            raise InferenceError(f"cannot load the tokenizer of {self.model_dir}: {exc}") from exc
        return_freed_heap()
        if huge_pages:
            weights_on_huge_pages()
        try:
            self._graph = Graph(session, self.manifest.kv.num_layers, embeddings.rows if embeddings else None)
        except InferenceError as exc:
            raise InferenceError(f"{self.model_dir}: {exc}") from None
        self.fast_path_kl = check_patched(self._graph, self.model_dir, self.manifest)
        self._share_buffer = (
            self.manifest.past_present_share_buffer if share_kv_buffer is None else share_kv_buffer
        )
        self._stop_strings = tuple(self.manifest.stop_strings)
        # batched decode needs GQA's per-row lengths (seqlens_k from attention_mask) and the in-place buffer
        self.continuous = self._share_buffer and self._graph.has_attention_mask
        self.max_batch = max_batch if self.continuous else 1
        self.prefixes = PrefixCache(prefix_cache_bytes) if self._share_buffer and prefix_cache_bytes else None
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

    # -- text <-> tokens -------------------------------------------------------------------------------------

    def render_prompt(self, messages: tuple[ChatMessage, ...]) -> str:
        return self._template.render(messages, add_generation_prompt=True)

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def count_prompt_tokens(self, messages: tuple[ChatMessage, ...]) -> int:
        return len(self.encode(self.render_prompt(messages)))

    def row_charge_bytes(self, prompt_tokens: int, max_new_tokens: int) -> int:
        """What one request holds while it decodes: its KV slots (the buffer grows in steps of 128 slots and
        every row of a batch is as long as its longest row) plus its logits row."""
        vocab_bytes = 4 * self._tokenizer.get_vocab_size()
        return round_capacity(prompt_tokens + max_new_tokens) * self.kv_bytes_per_token + vocab_bytes

    # -- generation ------------------------------------------------------------------------------------------

    def generate(
        self, request: GenerationRequest, on_delta: Callable[[str], None] | None = None
    ) -> Generation:
        """One request; `on_delta(text)` (optional, called on this thread) gets the answer as it is decoded, in
        pieces that join to the returned text."""
        return self._generate_alone(request, True, on_delta)

    def _generate_alone(
        self, request: GenerationRequest, stop_at_eos: bool, on_delta: Callable[[str], None] | None = None
    ) -> Generation:
        started = time.perf_counter()
        prompt_ids = self._request_ids(request)
        self._check(prompt_ids, request.max_new_tokens)
        stream = TextStream(self.decode, self._stop_strings, on_delta) if on_delta is not None else None
        seq = self._sequence(request, prompt_ids, stream=stream, stop_at_eos=stop_at_eos)
        reused = self._run_alone(seq)
        text = self._text(seq.out)
        if stream is not None:
            stream.finish(text)
        return Generation(
            text=text,
            prompt_tokens=len(prompt_ids),
            new_tokens=len(seq.out),
            seconds=time.perf_counter() - started,
            cached_tokens=reused,
        )

    def generate_batch(
        self, requests: list[GenerationRequest], *, stop_at_eos: bool = True
    ) -> list[Generation | Exception]:
        """One result per request, in order: its Generation, or the InferenceError / TooLargeError it raised.

        Valid requests are decoded together, `max_batch` at a time, the next joining as soon as a row is free.
        Each row stops at its own EOS, stop string or max_new_tokens. Greedy rows give exactly what `generate`
        gives; so does a seeded sampled row (each row draws from its own generator). `Generation.seconds` of
        every result is the wall time of the whole call. A failure of the runtime itself fails every row still
        running. `stop_at_eos=False` (benchmarks) runs every row to its max_new_tokens.
        """
        started = time.perf_counter()
        results: list[Generation | Exception | None] = [None] * len(requests)
        if not self.continuous:  # the classic loop: one request at a time
            for index, request in enumerate(requests):
                try:
                    results[index] = self._generate_alone(request, stop_at_eos)
                except InferenceError as exc:
                    results[index] = exc
            seconds = time.perf_counter() - started
            return [
                r if isinstance(r, Exception) else replace(r, seconds=seconds)
                for r in results
            ]  # type: ignore[union-attr]
        batch = self.open_batch(stop_at_eos=stop_at_eos)
        waiting = list(enumerate(requests))
        done: list[tuple[int, Generation]] = []
        while waiting or len(batch):
            while waiting and batch.free_rows:
                index, request = waiting.pop(0)
                try:
                    batch.add(request, tag=index)
                except InferenceError as exc:
                    results[index] = exc
            for index, outcome in batch.step():
                if isinstance(outcome, Exception):
                    results[index] = outcome
                else:
                    done.append((index, outcome))
        seconds = time.perf_counter() - started
        for index, generation in done:
            results[index] = replace(generation, seconds=seconds)
        return results  # type: ignore[return-value]  # every slot is filled above

    def open_batch(self, *, max_rows: int | None = None, stop_at_eos: bool = True) -> OnnxBatch:
        """A continuous batch of up to `max_rows` (at most max_batch) requests for the inference thread: add
        requests between steps, step until it is empty. Only where `continuous` (GQA graphs)."""
        if not self.continuous:
            raise InferenceError(
                f"{self.model_id}: this graph decodes one request at a time (no shared KV buffer)"
            )
        rows = self.max_batch if max_rows is None else max(1, min(max_rows, self.max_batch))
        return OnnxBatch(self, rows=rows, stop_at_eos=stop_at_eos)

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
        request = GenerationRequest(
            messages=(), max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
        )
        seq = self._sequence(request, list(prompt_ids), stop_at_eos=stop_at_eos)
        self._run_alone(seq)
        return seq.out

    def next_token_logits(self, ids: list[int]) -> np.ndarray:
        """Logits over the vocabulary after every prefix of `ids`, shape (len(ids), vocab), for quality checks."""
        kv = self.manifest.kv
        with self._lock, runtime_errors(f"{self.model_id}: inference failed"):
            if self._share_buffer:
                cache = RowKvCache(self._graph, kv.num_kv_heads, kv.head_dim, 1)
                cache.reserve(len(ids), [0])
                logits = cache.prefill(0, ids, 0, all_positions=True)
                if logits.shape[0] == len(ids):
                    return logits
                # graphs exported with prune_lm_head give the last position only: one token at a time
                cache = RowKvCache(self._graph, kv.num_kv_heads, kv.head_dim, 1)
                cache.reserve(len(ids), [0])
                return np.stack([cache.prefill(0, [token], i) for i, token in enumerate(ids)])
            logits = ConcatKvCache(self._graph, kv.num_kv_heads, kv.head_dim).run(ids, 0, all_positions=True)
            if logits.shape[0] == len(ids):
                return logits
            concat = ConcatKvCache(self._graph, kv.num_kv_heads, kv.head_dim)
            return np.stack([concat.run([token], i).copy() for i, token in enumerate(ids)])

    def last_logits(self, ids: list[int]) -> np.ndarray:
        """The logits after the last of `ids` only: a prefill in chunks of `prefill_chunk` into a cache of its
        own (the batch's rows are untouched), so a long judge prompt costs one row of logits, not one per token."""
        kv = self.manifest.kv
        with self._lock, runtime_errors(f"{self.model_id}: scoring failed"):
            if not self._share_buffer:
                return ConcatKvCache(self._graph, kv.num_kv_heads, kv.head_dim).run(list(ids), 0).copy()
            ids = list(ids)
            cache = RowKvCache(self._graph, kv.num_kv_heads, kv.head_dim, 1)
            cache.reserve(len(ids), [0])
            logits = None
            pieces = resume_from_prefix(self.prefixes, cache, 0, ids, prefill_chunks(len(ids), self.prefill_chunk))
            for start, end in pieces:
                logits = cache.prefill(0, ids[start:end], start)
                offer_prefix(self.prefixes, cache, 0, ids, end)
            return logits

    def label_token(self, label: str) -> int:
        """The token a label starts with (labels such as `m` or `7` are one token in common vocabularies)."""
        ids = self.encode(label)
        if not ids:
            raise InferenceError(f"{self.model_id}: the label {label!r} encodes to no token")
        return ids[0]

    def score_labels(self, messages: tuple[ChatMessage, ...], labels: tuple[str, ...]) -> LabelScores:
        """log p of each label as the reply's first token, after the rendered chat (cut to the context from its
        start if it must be): one prefill, no decode. Runs on the inference thread (a score job)."""
        ids = keep_the_end(self._prompt_ids(messages), self.context_length)
        if not ids:
            raise InferenceError("empty prompt")
        values = log_softmax_at(self.last_logits(ids), [self.label_token(label) for label in labels])
        return LabelScores(dict(zip(labels, values, strict=True)), len(ids))

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
        self._graph = None  # type: ignore[assignment]

    # -- inside ----------------------------------------------------------------------------------------------

    def prompt_ids(self, messages: tuple[ChatMessage, ...]) -> list[int]:
        """The rendered chat prompt's token ids (template included): what admission counts and generation reads."""
        return self._prompt_ids(messages)

    def _request_ids(self, request: GenerationRequest) -> list[int]:
        return list(request.prompt_ids) if request.prompt_ids is not None else self._prompt_ids(request.messages)

    def _prompt_ids(self, messages: tuple[ChatMessage, ...]) -> list[int]:
        try:
            return self.encode(self.render_prompt(messages))
        except Exception as exc:  # the template or the tokenizer choked on this request's text alone
            raise InferenceError(f"{self.model_id}: cannot render or tokenize the request: {exc}") from exc

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

    def _hit_stop_string(self, out: list[int]) -> bool:
        tail = self.decode(out[-16:])  # a stop string spans a few tokens at most
        return any(stop in tail for stop in self._stop_strings)

    def _sequence(
        self,
        request: GenerationRequest,
        prompt_ids: list[int],
        *,
        stream: TextStream | None = None,
        stop_at_eos: bool = True,
    ) -> Sequence:
        rng = np.random.default_rng(request.seed) if request.seed is not None else self._rng
        stop = self._hit_stop_string if self._stop_strings else None
        return Sequence(
            request, prompt_ids, rng, eos=self._eos, stop=stop, stream=stream, stop_at_eos=stop_at_eos
        )

    def _row_cache(self, rows: int) -> RowKvCache:
        kv = self.manifest.kv
        return RowKvCache(self._graph, kv.num_kv_heads, kv.head_dim, rows)

    def _run_alone(self, seq: Sequence) -> int:
        """Decode one sequence to its end: a batch of one (the same chunks and kernels as in any batch); the
        prompt tokens it took from a kept prefix."""
        t0 = time.perf_counter()
        reused = 0
        with self._lock, runtime_errors(f"{self.model_id}: inference failed"):
            if self.continuous:
                batch = ContinuousBatch(self._row_cache(1), max_rows=1, prefill_chunk=self.prefill_chunk,
                                        prefixes=self.prefixes)
                entry = batch.add(seq)
                t1 = None
                while len(batch):
                    batch.step()
                    if t1 is None and (seq.out or seq.done):
                        t1 = time.perf_counter()
                reused = entry.reused
            else:
                kv = self.manifest.kv
                cache = ConcatKvCache(self._graph, kv.num_kv_heads, kv.head_dim)
                logits = cache.run(seq.prompt_ids, 0)
                t1 = time.perf_counter()
                while seq.choose(logits):
                    logits = cache.run([seq.out[-1]], seq.length)
        t2 = time.perf_counter()
        self.last_timing = Timing(len(seq.prompt_ids), len(seq.out), (t1 or t2) - t0, t2 - (t1 or t2))
        return reused


class OnnxBatch:
    """Requests decoded together on the inference thread: `add` between steps, `step` until `len` is 0.

    `step()` returns (tag, Generation or InferenceError) for every request that finished in it; a runtime
    failure fails every request in the batch (they come back from that step) and empties it.
    `Generation.seconds` is the time from `add` to the end (what the row took, with its company).
    """

    def __init__(self, engine: OnnxEngine, *, rows: int, stop_at_eos: bool = True):
        self._engine = engine
        self._stop_at_eos = stop_at_eos
        self._batch = ContinuousBatch(
            engine._row_cache(rows), max_rows=rows, prefill_chunk=engine.prefill_chunk, prefixes=engine.prefixes
        )
        self._started: dict[int, float] = {}

    def __len__(self) -> int:
        return len(self._batch)

    @property
    def free_rows(self) -> int:
        return self._batch.free_rows

    @property
    def decoding(self) -> int:
        return self._batch.decoding

    @property
    def kv_bytes(self) -> int:
        """Bytes of KV buffer the batch holds now (0 when empty)."""
        return self._batch.kv_bytes

    def drop_all(self) -> list[object]:
        """Every request's tag, the batch emptied."""
        self._started.clear()
        return [entry.tag for entry in self._batch.drop_all()]

    def add(
        self, request: GenerationRequest, *, tag: object = None, on_delta: Callable[[str], None] | None = None
    ):
        """Join the batch at the next step; raises TooLargeError / InferenceError for this request alone."""
        engine = self._engine
        prompt_ids = engine._request_ids(request)
        engine._check(prompt_ids, request.max_new_tokens)
        stream = TextStream(engine.decode, engine._stop_strings, on_delta) if on_delta is not None else None
        seq = engine._sequence(request, prompt_ids, stream=stream, stop_at_eos=self._stop_at_eos)
        self._started[id(seq)] = time.perf_counter()
        self._batch.add(seq, tag)

    def step(self) -> list[tuple[object, Generation | Exception]]:
        engine = self._engine
        try:
            with engine._lock, runtime_errors(f"{engine.model_id}: batched inference failed"):
                finished = self._batch.step()
        except InferenceError as exc:
            log.error("%s; failing the %d requests of its batch", exc, len(self._batch))
            return [(tag, exc) for tag in self.drop_all()]
        now = time.perf_counter()
        results = []
        for entry in finished:
            seq = entry.seq
            text = engine._text(seq.out)
            if seq.stream is not None:
                seq.stream.finish(text)
            seconds = now - self._started.pop(id(seq))
            results.append((entry.tag, Generation(text, len(seq.prompt_ids), len(seq.out), seconds, entry.reused)))
        return results
