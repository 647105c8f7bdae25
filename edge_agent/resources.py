"""Where the shipped templates and the model catalogue are: the wheel's copies, else the source checkout's folders."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_IN_CHECKOUT = {"broker": "broker", "models": "models", "provision": "tools/provision", "systemd": "tools/systemd"}


def data_dir(name: str) -> Path:
    """`broker`, `models`, `provision` or `systemd` (pyproject.toml maps them into the wheel under `_data/`)."""
    packaged = _PACKAGE / "_data" / name
    return packaged if packaged.is_dir() else _PACKAGE.parent / _IN_CHECKOUT[name]
