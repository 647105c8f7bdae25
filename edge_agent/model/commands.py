"""The `edge-moa model` command: build, list, verify."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import ConfigError, EdgeMoaError

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("model", help="build, list and verify board-ready models")
    commands = parser.add_subparsers(dest="model_command", required=True)

    build = commands.add_parser("build", help="build a model from the catalogue, a GGUF file or a checkpoint")
    build.add_argument(
        "source", help="catalogue name (see `model list`), a .gguf file or a checkpoint directory"
    )
    build.add_argument(
        "--precision", choices=("int4", "int8", "fp32"), help="weight precision (default: catalogue's)"
    )
    build.add_argument("--out", type=Path, help="output directory (default: $EDGE_MOA_MODEL_DIR/NAME)")
    build.add_argument("--name", help="model name in the manifest (default: catalogue name or file name)")
    build.add_argument("--work-dir", type=Path, help="where downloads and intermediate files go")
    build.add_argument("--force", action="store_true", help="rebuild even if already built")
    build.add_argument(
        "--requantize",
        action="store_true",
        help="let the builder re-quantize a GGUF's weights instead of copying them exactly "
        "(faster decode, lower quality)",
    )
    build.add_argument(
        "--portable",
        action="store_true",
        help="exact on any onnxruntime and CPU (a model to copy to other boards); default: exact and faster "
        "on machines whose onnxruntime lays out its 4-bit weights like this one's (checked at build time)",
    )
    build.add_argument(
        "--exporter",
        choices=("genai", "optimum"),
        default="genai",
        help="genai: onnxruntime-genai's builder (default, the fast GroupQueryAttention graph); optimum: "
        "optimum-onnx, for architectures the builder lacks (slower decode, one request at a time; needs "
        "`make install-optimum`)",
    )
    build.add_argument(
        "--exporter-python",
        type=Path,
        help="the python of the venv that has optimum-onnx (default: $EDGE_MOA_OPTIMUM_PYTHON, this one if it "
        "has optimum, else the checkout's .venv-optimum)",
    )
    build.set_defaults(func=_build)

    listing = commands.add_parser("list", help="catalogue models and whether they are built")
    listing.set_defaults(func=_list)

    verify = commands.add_parser("verify", help="check a built model's hashes and that it loads and answers")
    verify.add_argument("model", help="catalogue name or model directory")
    verify.add_argument("--no-load", action="store_true", help="check hashes only")
    verify.set_defaults(func=_verify)


def _build(args: argparse.Namespace) -> int:
    from .build import build_model

    try:
        out = build_model(
            args.source,
            precision=args.precision,
            out_dir=args.out,
            work_dir=args.work_dir,
            name=args.name,
            force=args.force,
            exact=not args.requantize,
            portable=args.portable,
            exporter=args.exporter,
            exporter_python=args.exporter_python,
        )
    except EdgeMoaError as exc:
        print(f"model build failed: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


def _list(args: argparse.Namespace) -> int:
    from ..artifact.manifest import read_manifest
    from ..artifact.store import is_built, model_dir_for
    from .catalogue import load_catalogue

    catalogue = load_catalogue()
    if not catalogue:
        print("no catalogue found (models/catalogue.toml is part of a source checkout)")
    for name, entry in sorted(catalogue.items()):
        path = model_dir_for(name)
        state = "not built"
        if is_built(path):
            manifest = read_manifest(path)
            size = sum(p.stat().st_size for p in path.iterdir() if p.is_file()) / 1e6
            form = "tuned to this machine's onnxruntime" if manifest.block_offsets else "portable"
            state = f"built {manifest.precision} ({form}), {size:.0f} MB in {path}"
        print(f"{name:28} {entry.template_kind:10} {entry.licence:12} {state}")
        print(f"{'':28} {entry.description}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from ..artifact.store import resolve_model_dir
    from .build import verify_model
    from .catalogue import catalogue_names

    try:
        path = resolve_model_dir(args.model, known_names=catalogue_names)
        problems = verify_model(path, load=not args.no_load)
    except ConfigError as exc:  # said as for agent.toml's engine.model: here it is the argument itself
        print(f"model verify failed: {args.model}: {exc.problems[0][2]}", file=sys.stderr)
        return 1
    except EdgeMoaError as exc:
        print(f"model verify failed: {exc}", file=sys.stderr)
        return 1
    for problem in problems:
        print(f"{path}: {problem}", file=sys.stderr)
    if not problems:
        print(f"{path}: ok")
    return 1 if problems else 0
