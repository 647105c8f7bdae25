"""Checkpoint -> ONNX with optimum-onnx, the exporter of last resort for architectures the genai builder lacks.

Its graph has no GroupQueryAttention, so the engine runs it in the copying loop, one request at a time (about
half the genai builder's decode speed, DESIGN.md sec. 6). optimum-onnx 0.1 needs transformers < 4.58 and the
rest of the build transformers 5, so the export runs as a subprocess in a venv of its own (`make
install-optimum`: .venv-optimum), found as `--exporter-python`, $EDGE_MOA_OPTIMUM_PYTHON, this interpreter when
it has optimum, or the checkout's .venv-optimum, in that order.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ..errors import ModelBuildError
from .legacy_config import legacy_view

log = logging.getLogger(__name__)

PYTHON_ENV = "EDGE_MOA_OPTIMUM_PYTHON"
INSTALL_HINT = (
    "install it with `make install-optimum` (a venv of its own, .venv-optimum: optimum-onnx needs "
    "transformers < 4.58), or `pip install 'edge-moa[optimum]'` into another venv and name its python with "
    f"--exporter-python or ${PYTHON_ENV}"
)
# what the build takes from the checkpoint itself (optimum's copies pass through transformers 4)
CHECKPOINT_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "config.json")
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def optimum_python(explicit: str | Path | None = None) -> Path:
    """The interpreter that runs the export step; ModelBuildError saying how to install one if none is found."""
    named = explicit or os.environ.get(PYTHON_ENV)
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise ModelBuildError(f"the optimum interpreter {path} does not exist: {INSTALL_HINT}")
        return path
    if _has_optimum():
        return Path(sys.executable)
    checkout = _PACKAGE_ROOT / ".venv-optimum" / "bin" / "python"
    if checkout.is_file():
        return checkout
    raise ModelBuildError(f"`--exporter optimum` needs optimum-onnx, which is not installed: {INSTALL_HINT}")


def _has_optimum() -> bool:
    try:
        return importlib.util.find_spec("optimum.exporters.onnx") is not None
    except ModuleNotFoundError:
        return False


def run_optimum(
    checkpoint: Path, out_dir: Path, *, precision: str, work: Path, log_path: Path, python: Path
) -> dict:
    """Export (and quantize) into `out_dir` with the checkpoint's tokenizer files beside the graph; returns the
    export step's report (versions, quantized weights)."""
    from .optimum_export import REPORT

    view = legacy_view(checkpoint, work / "checkpoint-transformers4")
    shutil.rmtree(out_dir, ignore_errors=True)
    command = [
        str(python),
        "-m",
        "edge_agent.model.optimum_export",
        str(view),
        str(out_dir),
        "--precision",
        precision,
    ]
    python_path = os.pathsep.join(p for p in (str(_PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": python_path}
    log.info("exporting with optimum-onnx in %s (%s, log in %s)", python, precision, log_path)
    with open(log_path, "wb") as sink:
        code = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, env=env, check=False).returncode
    if code != 0 or not (out_dir / REPORT).is_file():
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        hint = f" ({INSTALL_HINT})" if any("No module named" in line for line in tail) else ""
        raise ModelBuildError(f"the optimum export failed (exit {code}){hint}:\n  " + "\n  ".join(tail))
    shutil.rmtree(view)
    for name in CHECKPOINT_FILES:
        if (checkpoint / name).is_file():
            shutil.copy2(checkpoint / name, out_dir / name)
    return json.loads((out_dir / REPORT).read_text(encoding="utf-8"))


def export_with_optimum(checkpoint: Path, out_dir: Path, *, precision: str, work: Path, python: Path) -> str:
    """Export, quantize and check against the checkpoint; returns the manifest's note on how it was made."""
    from .checkpoint_logits import have_torch, write_checkpoint_logits
    from .optimum_check import check_against_checkpoint, checkpoint_geometry
    from .optimum_export import CHECKPOINT_LOGITS

    report = run_optimum(
        checkpoint, out_dir, precision=precision, work=work, log_path=work / "optimum.log", python=python
    )
    reference, read_by = out_dir / CHECKPOINT_LOGITS, report["transformers"]
    if have_torch():  # the checkpoint as this venv's transformers reads it, not as the optimum venv's does
        read_by = write_checkpoint_logits(checkpoint, reference)
    kv, _ = checkpoint_geometry(out_dir / "config.json")
    kl = check_against_checkpoint(out_dir / "model.onnx", reference, kv, quantized=precision != "fp32")
    log.info(
        "optimum graph checked: KL %.2g from the checkpoint (transformers %s) on a fixed text", kl, read_by
    )
    return (
        f"; exported by optimum-onnx {report['optimum_onnx']} (transformers {report['transformers']}), "
        f"KL {kl:.2g} from the checkpoint (transformers {read_by}) on a fixed text; no GroupQueryAttention: "
        "one request at a time"
    )
