"""What a judge is to the rest of the evaluation: chat turns in, log-probabilities of the next token's labels out.

`--judge` picks one: `local` / `local:NAME` (a GGUF judge model by llama.cpp, or a built board model by our ONNX
engine), or an `http(s)://` URL of an OpenAI-compatible server that returns top log-probabilities.
"""

from __future__ import annotations

from typing import Protocol

from ..engine.label_scores import log_softmax_at
from ..errors import ConfigError

__all__ = ["Scorer", "log_softmax_at", "open_scorer"]


class Scorer(Protocol):
    name: str  # what the verdicts files and summaries record as the judge

    def label_logprobs(self, turns: list[tuple[str, str]], labels: tuple[str, ...]) -> dict[str, float]:
        """Log-probability of each label as the first token of the assistant's reply (-inf if unseen)."""
        ...

    def close(self) -> None: ...


def open_scorer(spec: str, *, threads: int = 2, api_key_env: str = "OPENAI_API_KEY", model: str | None = None,
                context_tokens: int = 4096, top_logprobs: int = 20) -> Scorer:
    """`local` (the default GGUF judge), `local:NAME` (a judge model, a .gguf path, or a built model directory /
    catalogue name: our ONNX engine), `http://...` (OpenAI-compatible chat completions with logprobs)."""
    if spec.startswith(("http://", "https://")):
        from .scorer_http import HttpScorer

        return HttpScorer(spec, api_key_env=api_key_env, model=model, top_logprobs=top_logprobs)
    if spec == "local" or spec.startswith("local:"):
        from .judge_models import DEFAULT_JUDGE_MODEL, JUDGE_MODELS

        name = spec.partition(":")[2] or DEFAULT_JUDGE_MODEL
        if name in JUDGE_MODELS or name.endswith(".gguf"):
            from .judge_models import judge_gguf
            from .scorer_llama import LlamaScorer

            return LlamaScorer(judge_gguf(name), threads=threads, context_tokens=context_tokens)
        from ..artifact.store import resolve_model_dir
        from .scorer_onnx import OnnxScorer

        return OnnxScorer(resolve_model_dir(name), threads=threads)
    raise ConfigError([("--judge", spec, "want local, local:NAME or an http(s):// URL")])
