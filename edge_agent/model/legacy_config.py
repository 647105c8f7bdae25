"""A transformers 5 checkpoint as transformers 4 reads it: the optimum venv has transformers < 4.58.

transformers 5 writes the rotary parameters only under `rope_parameters` (nested by layer type for Gemma 3) and
the weight type as `dtype`; 4.x reads `rope_theta` / `rope_scaling` / `rope_local_base_freq` / `torch_dtype`
and silently takes its defaults (theta 10000) when they are missing, which gives a wrong model, not an error.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

CONFIG = "config.json"


def legacy_config(config: dict) -> dict:
    """The same config with the 4.x keys added (a nested `text_config` too); 5.x keys are kept."""
    out = dict(config)
    rope = config.get("rope_parameters")
    if isinstance(rope, dict) and rope:
        layered = all(isinstance(value, dict) for value in rope.values())
        full = rope.get("full_attention", next(iter(rope.values()))) if layered else rope
        if "rope_theta" in full:
            out["rope_theta"] = full["rope_theta"]
        if layered and "rope_theta" in rope.get("sliding_attention", {}):
            out["rope_local_base_freq"] = rope["sliding_attention"]["rope_theta"]
        scaling = {key: value for key, value in full.items() if key != "rope_theta"}
        if scaling.get("rope_type", "default") != "default":
            out["rope_scaling"] = scaling
    if "dtype" in config and "torch_dtype" not in config:
        out["torch_dtype"] = config["dtype"]
    if isinstance(config.get("text_config"), dict):
        out["text_config"] = legacy_config(config["text_config"])
    return out


def legacy_view(checkpoint: Path, view: Path) -> Path:
    """`view`: the checkpoint's files as symlinks (no copy of the weights) beside a rewritten config.json."""
    shutil.rmtree(view, ignore_errors=True)
    view.mkdir(parents=True)
    for item in checkpoint.iterdir():
        if item.name != CONFIG:
            (view / item.name).symlink_to(item.resolve())
    config = json.loads((checkpoint / CONFIG).read_text(encoding="utf-8"))
    (view / CONFIG).write_text(json.dumps(legacy_config(config), indent=2), encoding="utf-8")
    return view
