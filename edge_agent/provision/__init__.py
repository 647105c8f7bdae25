"""Provisioning a fleet: inventory -> bridge tree -> per-board bundles (configs, credentials, units, install.sh)."""

from .bundle import Report, describe, provision
from .inventory import Board, Inventory, Link, MeshSettings, User, load_inventory, parse_inventory
from .render import Layout, in_place_layout, installed_layout
from .tree import BridgeTree, choose_tree

__all__ = [
    "Board", "BridgeTree", "Inventory", "Layout", "Link", "MeshSettings", "Report", "User", "choose_tree",
    "describe", "in_place_layout", "installed_layout", "load_inventory", "parse_inventory", "provision",
]
