"""pytest plugin: model directories built once per session (tiny random models; the default model if built)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.model.tiny import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model that never stops on its own: every generation runs to max_new_tokens."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_eos_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model whose first generated token is always EOS (generations come back empty)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-eos-model"), eos_logit_bias=1000.0)


def built_model_dir(name: str) -> Path:
    """A catalogue model's build in the cache; skips the test when it is not built (`make test-models` builds)."""
    from edge_agent.artifact.store import is_built, model_dir_for

    path = model_dir_for(name)
    if not is_built(path):
        pytest.skip(f"{name} not built in {path}: run `edge-moa model build {name}`")
    return path


def assert_tokenizes_as_llama_cpp(engine, model_dir: Path, texts) -> None:
    """Our tokenizer against llama.cpp's own on the GGUF the model was built from (kept beside the build)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    gguf = next(model_dir.parent.glob(f".{model_dir.name}.work/*.gguf"), None)
    if gguf is None:
        pytest.skip("the source GGUF is not kept beside the built model")
    llama = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    for text in texts:
        assert engine.encode(text) == llama.tokenize(text.encode(), add_bos=False, special=True), text


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The built default model (smollm2-135m-instruct); skips when it is not built."""
    from edge_agent.config import DEFAULT_MODEL

    return built_model_dir(DEFAULT_MODEL)
