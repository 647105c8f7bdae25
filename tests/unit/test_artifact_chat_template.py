"""Chat templates render as Hugging Face's apply_chat_template does."""

import pytest

from edge_agent.artifact.chat_template import CHATML_TEMPLATE, COMPLETION_TEMPLATE, ChatTemplate
from edge_agent.engine.base import ChatMessage
from edge_agent.errors import InferenceError


def test_chatml_with_system():
    text = ChatTemplate(CHATML_TEMPLATE).render(
        (ChatMessage("system", "Be brief."), ChatMessage("user", "Hi"))
    )
    assert (
        text
        == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_chatml_adds_smollm_default_system_prompt():
    text = ChatTemplate(CHATML_TEMPLATE).render(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=False
    )
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n")


def test_completion_template_for_base_models():
    template = ChatTemplate(COMPLETION_TEMPLATE, bos_token="<bos>")
    text = template.render((ChatMessage("system", "Synthesize."), ChatMessage("user", "2+2?")))
    assert text == "<bos>Synthesize.\n\nQuestion: 2+2?\nAnswer:"


def test_template_errors_are_inference_errors():
    with pytest.raises(InferenceError):
        ChatTemplate("{% if %}")
    template = ChatTemplate("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(InferenceError, match="roles must alternate"):
        template.render([])
