"""`edge-moa provision`: render the bundles of a fleet from its inventory, or only check it (`--check`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ConfigError
from .bundle import describe, provision
from .inventory import load_inventory
from .render import in_place_layout
from .tree import choose_tree


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "provision",
        help="render per-board bundles (agent.toml, mosquitto.conf, ACL, certificates, systemd units, install.sh)",
        description="Render, for every board of an inventory, everything it needs into OUT/boards/<id>/; "
        "existing passwords and certificates in OUT are reused. With --check, only validate the inventory "
        "and print the bridge tree it would build.",
    )
    parser.add_argument("--inventory", required=True, type=Path, metavar="FILE", help="inventory (TOML)")
    parser.add_argument("--out", type=Path, metavar="DIR", help="output folder (required unless --check)")
    parser.add_argument("--check", action="store_true", help="validate and print the tree; write nothing")
    parser.add_argument("--in-place", action="store_true",
                        help="paths for running each bundle where it is (tests, emulation) instead of /etc")
    parser.set_defaults(func=handler)
    return parser


def handler(args: argparse.Namespace) -> int:
    try:
        inventory = load_inventory(args.inventory)
        tree = choose_tree(inventory)
        if args.check:
            print(describe(inventory, tree))
            print(f"{args.inventory}: OK")
            return 0
        if args.out is None:
            print("edge-moa provision: --out DIR is required (or --check)", file=sys.stderr)
            return 2
        report = provision(inventory, args.out, layout_for=in_place_layout if args.in_place else None)
    except ConfigError as exc:
        for path, value, message in exc.problems:
            print(f"{path} = {value!r}: {message}" if value is not None else f"{path}: {message}", file=sys.stderr)
        return 1
    print(describe(inventory, report.tree))
    changed = report.changed()
    for path in changed:
        print(f"{report.actions[path]:>8}  {path}")
    for path in report.stale:
        print(f"warning: {path} is not in the inventory any more: stop its board's services and delete it",
              file=sys.stderr)
    print(f"{len(changed)} of {len(report.actions)} files written or issued into {args.out}; "
          f"copy {args.out}/boards/<id>/ to each board and run its install.sh as root")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (`python -m edge_agent.provision.commands`), for use before the CLI wires it."""
    parser = argparse.ArgumentParser(prog="edge-moa")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
