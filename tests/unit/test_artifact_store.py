"""Resolving `engine.model` to a built directory, with errors that say what to run."""

from pathlib import Path

import pytest

from edge_agent.artifact.store import model_dir_for, models_root, resolve_model_dir
from edge_agent.errors import ConfigError
from edge_agent.model.catalogue import catalogue_names


@pytest.fixture
def model_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGE_MOA_MODEL_DIR", str(tmp_path))
    return tmp_path


def test_env_var_sets_the_root(model_root: Path):
    assert models_root() == model_root
    assert model_dir_for("smollm2-135m-instruct") == model_root / "smollm2-135m-instruct"


def test_default_root_is_outside_the_repo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv("EDGE_MOA_MODEL_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert models_root() == tmp_path / "edge-moa" / "models"


def test_unbuilt_catalogue_model_says_what_to_run(model_root: Path):
    with pytest.raises(ConfigError, match="edge-moa model build smollm2-135m-instruct"):
        resolve_model_dir("smollm2-135m-instruct")


def test_unknown_name_lists_the_catalogue(model_root: Path):
    with pytest.raises(ConfigError, match="unknown model.*smollm2-135m-instruct"):
        resolve_model_dir("no-such-model", known_names=catalogue_names)


def test_built_name_and_path_resolve(model_root: Path):
    built = model_root / "smollm2-135m-instruct"
    built.mkdir()
    (built / "manifest.json").write_text("{}")
    assert resolve_model_dir("smollm2-135m-instruct") == built
    assert resolve_model_dir(str(built)) == built


def test_path_without_manifest(tmp_path: Path):
    with pytest.raises(ConfigError, match="not a built model directory"):
        resolve_model_dir(str(tmp_path))
