"""A format-neutral view of a workflow: nodes with named inputs, each a value or a link.

Both formats are read into it (`ui_format`, `api_format`); the rewrite (`engine`, `rules`)
works on it alone, and each format writes its own file back from the rewrite's plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class MigrationError(ValueError):
    """The input is not a workflow this converter can read; the message says what to do."""


@dataclass(frozen=True)
class Link:
    """Output `slot` of node `node` in the input workflow."""

    node: str
    slot: int


@dataclass(frozen=True)
class NewRef:
    """Output `slot` of a node the conversion adds (`key` is its temporary name)."""

    key: str
    slot: int = 0


Ref = Link | NewRef


@dataclass
class Node:
    """One node of the input workflow. `inputs`: name -> literal or Link.

    For node types the converter has no table for (UI format), only linked inputs are known;
    `widgets_ok` is False when an incumbent node's saved widgets do not fit its table.
    """

    id: str
    type: str
    inputs: dict[str, Any]
    title: str | None = None
    widgets_ok: bool = True
    problem: str = ""
    mode: int = 0  # 0 runs; 2 muted, 4 bypassed (UI format)
    note: str = ""  # what reading it assumed (older saved widgets), for the report


@dataclass
class Graph:
    nodes: dict[str, Node] = field(default_factory=dict)

    def consumers(self, node_id: str) -> list[tuple[str, str, int]]:
        """(consumer id, input name, output slot) for every link leaving `node_id`."""
        found = []
        for node in self.nodes.values():
            for name, value in node.inputs.items():
                if isinstance(value, Link) and value.node == node_id:
                    found.append((node.id, name, value.slot))
        return found

    def order(self) -> list[str]:
        """Node ids, every node after the nodes it takes links from (ties by id)."""
        pending = {nid: {v.node for v in n.inputs.values() if isinstance(v, Link) and v.node in self.nodes}
                   for nid, n in self.nodes.items()}
        done: list[str] = []
        placed: set[str] = set()
        while pending:
            ready = sorted((nid for nid, deps in pending.items() if deps <= placed), key=_id_key)
            if not ready:
                raise MigrationError(f"the workflow's links form a cycle through nodes {sorted(pending, key=_id_key)}; "
                                     "ComfyUI cannot run it either. Fix the links and convert again.")
            for nid in ready:
                done.append(nid)
                placed.add(nid)
                del pending[nid]
        return done


def _id_key(node_id: str) -> tuple[int, str]:
    return (int(node_id), "") if node_id.isdigit() else (1 << 62, node_id)
