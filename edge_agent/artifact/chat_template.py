"""Render a model's own jinja2 chat template the way Hugging Face tokenizers do (sandboxed, trimmed blocks)."""

from __future__ import annotations

from collections.abc import Iterable

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import InferenceError

# ChatML as SmolLM2-Instruct ships it (its tokenizer_config.json), default system prompt included.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# For base models (no chat training): the messages as plain text, ending where the answer should start.
COMPLETION_TEMPLATE = (
    "{{ bos_token or '' }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'Question: ' + message['content'] + '\\n' }}"
    "{% else %}{{ 'Answer: ' + message['content'] + '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Answer:' }}{% endif %}"
)


def _raise(message: str) -> None:
    raise TemplateError(message)


class ChatTemplate:
    """A compiled template; `render` is pure and thread-safe."""

    def __init__(self, source: str, *, bos_token: str | None = None, eos_token: str | None = None):
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        try:
            self._template = env.from_string(source)
        except TemplateError as exc:
            raise InferenceError(f"the model's chat template does not compile: {exc}") from exc
        self._bos_token = bos_token or ""
        self._eos_token = eos_token or ""

    def render(self, messages: Iterable[object], *, add_generation_prompt: bool = True) -> str:
        """`messages`: objects with `role` and `content` (ChatMessage) or mappings with those keys."""
        plain = [
            dict(m) if isinstance(m, dict) else {"role": m.role, "content": m.content}  # type: ignore[attr-defined]
            for m in messages
        ]
        try:
            return self._template.render(
                messages=plain,
                add_generation_prompt=add_generation_prompt,
                bos_token=self._bos_token,
                eos_token=self._eos_token,
            )
        except TemplateError as exc:
            raise InferenceError(f"cannot render the chat template: {exc}") from exc
