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


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The built default model (smollm2-135m-instruct); skips when it is not built."""
    from edge_agent.artifact.store import is_built, model_dir_for
    from edge_agent.config import DEFAULT_MODEL

    path = model_dir_for(DEFAULT_MODEL)
    if not is_built(path):
        pytest.skip(f"default model not built in {path}: run `edge-moa model build {DEFAULT_MODEL}`")
    return path
