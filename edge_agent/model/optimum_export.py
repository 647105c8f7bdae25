"""The optimum export step, run as a script by the interpreter of the optimum venv (model/optimum.py starts it).

`python -m edge_agent.model.optimum_export CHECKPOINT OUT --precision P`: optimum-onnx exports the checkpoint as
a decoder with past (`text-generation-with-past`), the graph is quantized as `precision` asks, and the
checkpoint's own logits (PyTorch, fp32) after prefixes of a fixed text are written beside it, for the main venv to
check the graph against with the engine's own loop. Imports only what that venv has: optimum, torch, onnx and the
numpy-only parts of edge_agent.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .checkpoint_logits import write_checkpoint_logits
from .quantize import quantize_graph, save_graph

CHECKPOINT_LOGITS = "checkpoint_logits.npz"
REPORT = "optimum_export.json"


def export(checkpoint: Path, out: Path, precision: str) -> dict:
    import onnx
    import transformers
    from optimum.exporters.onnx import main_export

    fp32 = out / "fp32"
    # optimum's own check (PyTorch against onnxruntime on dummy inputs with a past) runs too; it only warns when
    # the values differ, which is why the main venv checks the graph against CHECKPOINT_LOGITS as well
    main_export(
        str(checkpoint),
        output=str(fp32),
        task="text-generation-with-past",
        device="cpu",
        local_files_only=True,
        do_validation=True,
    )
    graph = out / "model.onnx"
    quantized = 0
    if precision == "fp32":
        save_graph(onnx.load(str(fp32 / "model.onnx")), graph)
    else:
        quantized = quantize_graph(fp32 / "model.onnx", graph, precision)
    write_checkpoint_logits(checkpoint, out / CHECKPOINT_LOGITS)
    return {
        "optimum_onnx": _version("optimum-onnx"),
        "transformers": transformers.__version__,
        "quantized_matmuls": quantized,
    }


def _version(distribution: str) -> str:
    from importlib.metadata import version

    return version(distribution)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_agent.model.optimum_export")
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--precision", choices=("int4", "int8", "fp32"), required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    report = export(args.checkpoint, args.out, args.precision)
    (args.out / REPORT).write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
