"""Checkpoint -> ONNX with onnxruntime-genai's model builder (MatMulNBits + GroupQueryAttention graphs).

Chosen over optimum: its int4 graph runs about twice as fast in a plain onnxruntime loop (DESIGN.md sec. 6), and
optimum-onnx wants transformers < 4.58 while this builder wants transformers 5. Run as a subprocess so its
verbose per-tensor output goes to a log file, with the hub disabled (`hf_token=false`, HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from ..errors import ModelBuildError

log = logging.getLogger(__name__)

PRECISIONS = ("int4", "int8", "fp32")


def run_builder(
    checkpoint: Path,
    out_dir: Path,
    *,
    precision: str,
    cache_dir: Path,
    log_path: Path,
    options: dict[str, str] | None = None,
) -> Path:
    if precision not in PRECISIONS:
        raise ModelBuildError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    extra = {"hf_token": "false", **(options or {})}
    command = [
        sys.executable,
        "-m",
        "edge_agent.model.export",
        "-i",
        str(checkpoint),
        "-o",
        str(out_dir),
        "-p",
        precision,
        "-e",
        "cpu",
        "-c",
        str(cache_dir),
        "--extra_options",
        *[f"{key}={value}" for key, value in sorted(extra.items())],
    ]
    package_root = str(Path(__file__).resolve().parents[2])
    python_path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": python_path}
    log.info("exporting with onnxruntime-genai's builder (%s, log in %s)", precision, log_path)
    with open(log_path, "wb") as sink:
        code = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, env=env, check=False).returncode
    if code != 0 or not (out_dir / "model.onnx").is_file():
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        hint = ""
        if any("No module named 'onnxruntime_genai'" in line or "onnx_ir" in line for line in tail):
            hint = " (install the export extra: pip install 'edge-moa[export]')"
        raise ModelBuildError(f"the genai builder failed (exit {code}){hint}:\n  " + "\n  ".join(tail))
    return out_dir


def _patch_builder() -> None:
    """transformers 5 nests Gemma 3's rope parameters by layer type; the genai 0.18 builder reads them flat for
    Gemma 3 (it handles the nesting only for Gemma 4): flatten them, keeping the local theta where it looks."""
    import onnxruntime_genai.models  # noqa: F401  (puts its `builders` package on sys.path)
    from builders import base  # type: ignore[import-not-found]

    original = base.Model.make_rope_init

    def make_rope_init(self, config):  # type: ignore[no-untyped-def]
        rope = getattr(config, "rope_parameters", None)
        if (
            getattr(config, "model_type", "") == "gemma3_text"
            and isinstance(rope, dict)
            and "full_attention" in rope
        ):
            config.rope_local_base_freq = rope["sliding_attention"]["rope_theta"]
            config.rope_theta = rope["full_attention"]["rope_theta"]
            config.rope_parameters = dict(rope["full_attention"])
        return original(self, config)

    base.Model.make_rope_init = make_rope_init


if __name__ == "__main__":
    import runpy

    _patch_builder()
    sys.argv[0] = "onnxruntime_genai.models.builder"
    runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__", alter_sys=True)
