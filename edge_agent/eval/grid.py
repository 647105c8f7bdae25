"""The configurations an evaluation compares: `--configs "0,0;1,2;2,2"` -> (M, k, request options) and a name each."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import ConfigError

# request options a configuration may set beside M and k (the public prompt JSON, DESIGN.md sec. 2)
_OPTIONS = {"temperature": float, "max_new_tokens": int, "sample": int, "aggregation": str, "select_ranker": str,
            "reference_max_chars": int}
_CHOICES = {"aggregation": ("synthesize", "select"), "select_ranker": ("pointwise", "pairwise")}
_NAME_ONLY = {"sample"}  # `sample=2`: the same request again under another name (a second draw to compare)
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,120}")


@dataclass(frozen=True)
class EvalConfig:
    layers: int
    proposers: int
    options: dict[str, float | int | str] = field(default_factory=dict)
    label: str = ""  # what the models of the mesh are, e.g. "smollm2-135m-instruct" or "mixed-smollm2+qwen05"

    @property
    def generator(self) -> str:
        """The AlpacaEval `generator` and the output file's stem: model label, M, k and any option."""
        parts = [self.label or "edge-moa", f"M{self.layers}", f"k{self.proposers if self.layers else 0}"]
        parts += [f"{key}{value}" if isinstance(value, str) else f"{key}{value:g}"
                  for key, value in sorted(self.options.items())]
        return "_".join(parts)

    def request(self) -> dict:
        sent = {key: value for key, value in self.options.items() if key not in _NAME_ONLY}
        return {"layers": self.layers, "proposers": self.proposers, **sent}


def parse_configs(text: str, label: str = "") -> list[EvalConfig]:
    """`M,k[,key=value...]` separated by `;`, e.g. `0,0;1,2;1,2,temperature=0;0,0,sample=2;1,2,aggregation=select,
    select_ranker=pairwise`."""
    configs: list[EvalConfig] = []
    for n, chunk in enumerate(part.strip() for part in text.split(";")):
        if not chunk:
            continue
        fields = [f.strip() for f in chunk.split(",")]
        try:
            layers, proposers = int(fields[0]), int(fields[1])
            options = {}
            for item in fields[2:]:
                key, value = item.split("=", 1)
                if key not in _OPTIONS:
                    raise ValueError(f"unknown option {key!r} (known: {', '.join(_OPTIONS)})")
                options[key] = _OPTIONS[key](value)
                if key in _CHOICES and value not in _CHOICES[key]:
                    raise ValueError(f"{key} must be one of {', '.join(_CHOICES[key])}")
        except (ValueError, IndexError) as exc:
            raise ConfigError([(f"--configs[{n}]", chunk, f"want M,k[,key=value...]: {exc}")]) from None
        if layers < 0 or proposers < 0:
            raise ConfigError([(f"--configs[{n}]", chunk, "M and k must be >= 0")])
        configs.append(EvalConfig(layers, proposers, options, label))
    if not configs:
        raise ConfigError([("--configs", text, "no configuration given")])
    names = [c.generator for c in configs]
    if len(set(names)) != len(names):
        raise ConfigError([("--configs", text, f"two configurations share a name: {names}")])
    for name in names:
        if not _NAME.fullmatch(name):
            raise ConfigError([("--configs", name, "generator name must match [A-Za-z0-9_.-]{1,120}")])
    return configs


def models_label(models: list[str]) -> str:
    """A short name for the mesh's model mix: one model's name, or `mixed-a+b` for several."""
    short = [m.rstrip("/").rsplit("/", 1)[-1] for m in models]
    unique = list(dict.fromkeys(short))
    return unique[0] if len(unique) == 1 else "mixed-" + "+".join(unique)
