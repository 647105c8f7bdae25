"""Choosing the bridge tree: bridges must form a tree, since any cycle of bridges floods forever (issue 4)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ..errors import ConfigError
from .inventory import Inventory, Link


@dataclass(frozen=True)
class BridgeTree:
    """A spanning tree over the boards; each child's broker dials its parent's (one bridge per tree edge)."""

    root: str
    parent: dict[str, str]  # child -> parent; the root has no entry
    edges: tuple[Link, ...]  # the links on the tree
    left_out: tuple[Link, ...]  # links that would have closed a cycle

    def children(self, board_id: str) -> list[str]:
        return sorted(child for child, parent in self.parent.items() if parent == board_id)

    def subtree(self, board_id: str) -> list[str]:
        """The board and everything below it: the senders whose traffic its uplink bridge carries upward."""
        found, todo = [], [board_id]
        while todo:
            node = todo.pop()
            found.append(node)
            todo.extend(self.children(node))
        return sorted(found)

    def link_to_parent(self, board_id: str) -> Link:
        pair = {board_id, self.parent[board_id]}
        return next(link for link in self.edges if set(link.between) == pair)

    def draw(self) -> str:
        """The tree as indented text, root first."""
        lines = [self.root]

        def walk(node: str, prefix: str) -> None:
            kids = self.children(node)
            for i, child in enumerate(kids):
                last = i == len(kids) - 1
                lines.append(f"{prefix}{'└── ' if last else '├── '}{child}  ({_describe(self.link_to_parent(child))})")
                walk(child, prefix + ("    " if last else "│   "))

        walk(self.root, "")
        return "\n".join(lines)


def _describe(link: Link) -> str:
    return f"cost {link.cost:g}" + (", preferred" if link.preferred else "")


def choose_tree(inventory: Inventory) -> BridgeTree:
    """Kruskal over the links: operator-preferred links first, then lowest cost, ties by board ids.

    The root is the hub if one is named, else the tree's centre (smallest depth), ties by id; bridges point
    from child to parent. A mesh whose links leave some board unreachable is refused.
    """
    ids = sorted(board.id for board in inventory.boards)
    owner = {board_id: board_id for board_id in ids}

    def find(node: str) -> str:
        while owner[node] != node:
            owner[node] = owner[owner[node]]
            node = owner[node]
        return node

    edges, left_out = [], []
    for link in sorted(inventory.all_links(), key=lambda l: (not l.preferred, l.cost, sorted(l.between))):
        a, b = (find(end) for end in link.between)
        if a == b:
            left_out.append(link)
        else:
            owner[a] = b
            edges.append(link)
    groups: dict[str, list[str]] = {}
    for board_id in ids:
        groups.setdefault(find(board_id), []).append(board_id)
    if len(groups) > 1:
        parts = sorted(sorted(group) for group in groups.values())
        described = "; ".join("{" + ", ".join(group) + "}" for group in parts)
        message = (f"the boards fall apart into {len(parts)} groups: {described}; "
                   "add links or neighbours so that every board is reachable")
        raise ConfigError([("links", None, message)])
    hub = next((board.id for board in inventory.boards if board.role == "hub"), None)
    root = hub or min(ids, key=lambda node: (_height(node, edges), node))
    parent = {}
    for node, via in _bfs(root, edges):
        if via is not None:
            parent[node] = via
    return BridgeTree(root=root, parent=parent, edges=tuple(edges), left_out=tuple(left_out))


def _neighbours(edges: list[Link]) -> dict[str, list[str]]:
    adjacent: dict[str, list[str]] = {}
    for link in edges:
        a, b = link.between
        adjacent.setdefault(a, []).append(b)
        adjacent.setdefault(b, []).append(a)
    return adjacent


def _bfs(root: str, edges: list[Link]) -> list[tuple[str, str | None]]:
    adjacent = _neighbours(edges)
    seen, order, todo = {root}, [], deque([(root, None)])
    while todo:
        node, via = todo.popleft()
        order.append((node, via))
        for other in sorted(adjacent.get(node, [])):
            if other not in seen:
                seen.add(other)
                todo.append((other, node))
    return order


def _height(root: str, edges: list[Link]) -> int:
    depth = {root: 0}
    for node, via in _bfs(root, edges):
        if via is not None:
            depth[node] = depth[via] + 1
    return max(depth.values())
