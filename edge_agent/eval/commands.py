"""`edge-moa eval` and `edge-moa judge`: argument parsing only; the work is in the modules beside."""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path

log = logging.getLogger(__name__)


def register(sub) -> None:
    from ..cli import add_broker_args
    from ..config import DEFAULT_MODEL

    ev = sub.add_parser("eval", help="answer AlpacaEval instructions with a mesh, one outputs file per configuration")
    ev.add_argument("--instructions", default="alpaca_eval",
                    help="`alpaca_eval` (its 805, downloaded once) or a JSON file of the same format")
    ev.add_argument("--limit", type=int, help="a stratified subset (by `dataset`) of this many instructions")
    ev.add_argument("--seed", type=int, default=0, help="seed of the subset (default 0)")
    ev.add_argument("--exclude", type=Path, action="append", default=[], metavar="OUTPUTS.json",
                    help="skip the instructions this outputs file answers, before --limit draws (repeatable): "
                         "a replication on instructions disjoint from an earlier run's")
    ev.add_argument("--configs", default="0,0;1,2",
                    help="M,k[,temperature=T][,max_new_tokens=N][,aggregation=synthesize|select]"
                         "[,select_ranker=pointwise|pairwise][,reference_max_chars=C][,sample=I] separated by ';' "
                         "(default '0,0;1,2'); sample=I only renames: another draw of the same configuration")
    ev.add_argument("--out", type=Path, required=True, help="directory for <generator>.json and .stats.jsonl")
    ev.add_argument("--agents", type=int, default=4, help="local mesh: number of agents (default 4)")
    ev.add_argument("--model", default=DEFAULT_MODEL, help="local mesh: every agent's model")
    ev.add_argument("--models", help="local mesh: comma-separated model per agent (overrides --model/--agents)")
    ev.add_argument("--threads", type=int, default=1, help="local mesh: inference threads per agent")
    ev.add_argument("--workdir", type=Path, help="local mesh: where agent configs and logs go")
    ev.add_argument("--max-new-tokens", type=int, default=256, help="per inference, unless a config sets it")
    ev.add_argument("--parallel", type=int, default=1, help="prompts in flight at once (default 1)")
    ev.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for one answer")
    ev.add_argument("--device", default=None,
                    help="device(s) asked, comma-separated, round-robin (default: the first agent)")
    ev.add_argument("--label", help="model label in generator names (default: from the models; `mesh` with --broker)")
    add_broker_args(ev)
    ev.set_defaults(func=cmd_eval, broker=None)

    from .judge_cli import register_judge

    register_judge(sub)


def cmd_eval(args: argparse.Namespace) -> int:
    from .grid import models_label, parse_configs
    from .instructions import excluding, load_instructions, stratified_subset
    from .session import run_eval

    items = load_instructions(args.instructions)
    if args.exclude:
        items = excluding(items, args.exclude)
    items = stratified_subset(items, args.limit, args.seed)
    models = [m.strip() for m in args.models.split(",")] if args.models else [args.model] * args.agents
    label = args.label or ("mesh" if args.broker else models_label([_model_name(m) for m in models]))
    configs = parse_configs(args.configs, label)
    if not args.verbose:  # the progress line says what happens; agents' INFO lines would drown it
        logging.getLogger("edge_agent").setLevel(logging.WARNING)
    # SIGTERM (a scheduler, `kill`) ends the run as Ctrl-C does: the agents of a local mesh are stopped. Finished
    # outputs are on disk either way (each answer rewrites its file atomically).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background by a shell: make it count
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return run_eval(args, items, configs, models)


def _model_name(model: str) -> str:
    """The manifest's name of a built model (a catalogue name or a directory), for generator names."""
    from ..artifact.manifest import read_manifest
    from ..artifact.store import resolve_model_dir

    return read_manifest(resolve_model_dir(model)).name
