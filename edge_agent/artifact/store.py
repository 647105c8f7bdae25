"""Where built models live (outside the repo) and how a config's `engine.model` finds one."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..errors import ConfigError
from .manifest import MANIFEST_NAME

MODEL_DIR_ENV = "EDGE_MOA_MODEL_DIR"


def models_root() -> Path:
    """`$EDGE_MOA_MODEL_DIR`, else `$XDG_CACHE_HOME/edge-moa/models`, else `~/.cache/edge-moa/models`."""
    if os.environ.get(MODEL_DIR_ENV):
        return Path(os.environ[MODEL_DIR_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "edge-moa" / "models"


def model_dir_for(name: str) -> Path:
    """Where `edge-moa model build NAME` puts catalogue model NAME."""
    return models_root() / name


def is_built(model_dir: Path) -> bool:
    return (model_dir / MANIFEST_NAME).is_file()


def looks_like_path(model: str) -> bool:
    return "/" in model or model.startswith((".", "~")) or os.sep in model


def resolve_model_dir(model: str, *, known_names: Callable[[], list[str]] | None = None) -> Path:
    """A built model directory from a catalogue name or a path; a ConfigError saying what to run otherwise.

    `known_names` (the build catalogue's, model/catalogue.py) lets an unknown name be told from an unbuilt one."""
    if looks_like_path(model):
        path = Path(model).expanduser()
        if not is_built(path):
            raise ConfigError(
                [("engine.model", model, f"not a built model directory (no {MANIFEST_NAME} in it)")]
            )
        return path
    path = model_dir_for(model)
    if is_built(path):
        return path
    names = known_names() if known_names is not None else []
    if names and model not in names:
        raise ConfigError([("engine.model", model, f"unknown model; the catalogue has {', '.join(names)}")])
    raise ConfigError(
        [("engine.model", model, f"not built yet (looked in {path}): run `edge-moa model build {model}`")]
    )
