"""The conversion report: every incumbent node, what became of it, and why."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from .graph import Node


@dataclass
class Entry:
    node: str
    type: str
    status: str  # "converted", "kept" (converted, original stays too), "left" (not converted)
    became: list[str]
    message: str


@dataclass
class Report:
    entries: list[Entry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def converted(self, node: Node, became: list[str], note: str = "") -> None:
        self.entries.append(Entry(node.id, node.type, "converted", became, note))

    def kept(self, node: Node, became: list[str], why: str, note: str = "") -> None:
        self.entries.append(Entry(node.id, node.type, "kept", became, "; ".join(m for m in (why, note) if m)))

    def left(self, node: Node, why: str) -> None:
        self.entries.append(Entry(node.id, node.type, "left", [], why))

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    @property
    def needs_incumbent(self) -> bool:
        """True when the output still uses ComfyUI_IPAdapter_plus nodes."""
        return any(e.status in ("kept", "left") for e in self.entries)

    def text(self) -> str:
        lines = []
        order = {"converted": 0, "kept": 1, "left": 2}
        for e in sorted(self.entries, key=lambda e: (order[e.status], _key(e.node))):
            became = f" -> {' + '.join(e.became)}" if e.became else ""
            head = {"converted": "CONVERTED", "kept": "KEPT TOO", "left": "NOT CONVERTED"}[e.status]
            lines.append(f"{head:13} node {e.node} {e.type}{became}" + (f": {e.message}" if e.message else ""))
        if not self.entries:
            lines.append("No ComfyUI_IPAdapter_plus nodes found: the workflow is unchanged.")
        if self.needs_incumbent:
            lines.append("The output still has ComfyUI_IPAdapter_plus nodes (listed above): keep that pack installed "
                         "for them, or replace them by hand as each line says.")
        lines += [f"NOTE: {n}" for n in self.notes]
        return "\n".join(lines)

    def json(self) -> str:
        return json.dumps({"entries": [asdict(e) for e in self.entries], "notes": self.notes}, indent=1)


def _key(node_id: str) -> tuple[int, str]:
    return (int(node_id), "") if node_id.isdigit() else (1 << 62, node_id)
