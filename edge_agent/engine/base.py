"""What the agent needs from an inference engine: chat in, text out, and the numbers the queue charges."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(frozen=True)
class GenerationRequest:
    messages: tuple[ChatMessage, ...]
    max_new_tokens: int = 128
    temperature: float = 0.7  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    # the rendered prompt's token ids when the caller already has them (the agent tokenizes once, for admission)
    prompt_ids: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    new_tokens: int
    seconds: float  # wall time of this inference (prefill + decode); from generate_batch, of the whole call
    cached_tokens: int = 0  # prompt tokens taken from a kept prefix's KV, not prefilled (engine/prefix_cache.py)


@dataclass(frozen=True)
class LabelScores:
    """What a score job reads instead of generating: the next token's log-probabilities of a few labels."""

    logprobs: dict[str, float]  # log p(label's first token) as the reply's first token (-inf: never)
    prompt_tokens: int  # what the prefill read


class Engine(Protocol):
    """One loaded model. generate(_batch) runs on the inference thread only; the rest is cheap, thread-safe."""

    model_id: str
    context_length: int
    kv_bytes_per_token: int  # layers x 2 x kv_heads x head_dim x dtype bytes, from the manifest
    max_batch: int  # the most requests generate_batch decodes together; 1 = no batching

    def count_prompt_tokens(self, messages: tuple[ChatMessage, ...]) -> int:
        """Tokens of the rendered chat prompt (template included)."""
        ...

    def prompt_ids(self, messages: tuple[ChatMessage, ...]) -> list[int]:
        """The rendered chat prompt's token ids; passed back in `GenerationRequest.prompt_ids`, they are not
        tokenized again."""
        ...

    def row_charge_bytes(self, prompt_tokens: int, max_new_tokens: int) -> int:
        """Bytes one task holds while it decodes (its KV slots, rounded up to the buffer's growth step, and its
        logits): what the queue should charge it. A batch's rows are as long as its longest, so a short task
        decoding beside a long one holds the long one's length: InferenceWorker.kv_bytes says what is held now."""
        ...

    def generate(
        self, request: GenerationRequest, on_delta: Callable[[str], None] | None = None
    ) -> Generation:
        """Raises TooLargeError when prompt + max_new_tokens exceed the context, InferenceError otherwise.
        Engines with `streams = True` call `on_delta(text)` on this thread with pieces that join to the text."""
        ...

    def generate_batch(self, requests: list[GenerationRequest]) -> list[Generation | Exception]:
        """Serve several queued requests in one decode loop (DESIGN.md sec. 4: b tasks in alpha(b), not b*alpha).

        Returns one item per request, in order: its Generation, or the TooLargeError / InferenceError that request
        alone raised (one bad request does not fail the others; a runtime failure fails its whole batch). At most
        `max_batch` requests share a decode loop; a longer list runs in successive batches. Every Generation's
        `seconds` is the wall time of the whole call. Greedy results equal what `generate` returns.
        """
        ...

    def score_labels(self, messages: tuple[ChatMessage, ...], labels: tuple[str, ...]) -> LabelScores:
        """One prefill of the rendered chat, no decode: how likely each label is as the reply's first token (the
        agent's `select` ranker; a score job on the inference thread)."""
        ...

    # Engines with `continuous = True` also have `open_batch(max_rows=...)`: a batch to `add(request, tag=...,
    # on_delta=...)` to between `step()`s, each step returning [(tag, Generation | InferenceError)] of the rows that
    # finished in it (OnnxBatch, SyntheticBatch); InferenceWorker serves through it.

    def warm_up(self) -> None: ...

    def close(self) -> None: ...
