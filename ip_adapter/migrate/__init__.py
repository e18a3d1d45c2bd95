"""Convert ComfyUI_IPAdapter_plus workflows (UI or API format) to this pack's nodes.

`convert(data)` returns the converted workflow, in the same format, and a `Report` that
lists every incumbent node: converted, kept beside its replacement, or left as it was (and
why, and what to do). Pure Python: no ComfyUI, no torch. Command line: `python -m
ip_adapter.migrate IN.json -o OUT.json`.
"""

from __future__ import annotations

from typing import Any

from . import api_format, ui_format
from .engine import plan
from .frame_rules import batch, tiled
from .graph import MigrationError
from .report import Report
from .rules import MIDDLE_NOTE, PLUS_UNCOND_NOTE
from .rules import RULES as PLAIN_RULES

RULES = {**PLAIN_RULES, "IPAdapterBatch": batch, "IPAdapterTiled": tiled}

__all__ = ["MigrationError", "Report", "convert", "detect_format"]


def detect_format(data: Any) -> str:
    """'ui' or 'api'; MigrationError saying what was found otherwise."""
    if ui_format.is_ui(data):
        return "ui"
    if api_format.is_api(data):
        return "api"
    if isinstance(data, dict) and api_format.is_api(data.get("prompt")):
        raise MigrationError("this is a /prompt request body: convert its 'prompt' object (the API workflow) instead")
    found = type(data).__name__ if not isinstance(data, dict) else f"an object with keys {sorted(data)[:8]}"
    raise MigrationError(
        f"not a ComfyUI workflow: found {found}. Expected the UI format (an object with 'nodes' and 'links', "
        "what Save writes) or the API format (an object of {id: {'class_type', 'inputs'}}, what Export (API) writes)."
    )


def convert(data: Any) -> tuple[dict[str, Any], Report]:
    kind = detect_format(data)
    fmt = ui_format if kind == "ui" else api_format
    graph = fmt.read(data)
    report = Report()
    result = plan(graph, RULES, report)
    new_types = {n.type for n in result.new_nodes}
    if "ApplyIPAdapter" in new_types:
        report.note(MIDDLE_NOTE)
    if any(n.type == "LoadIPAdapter" and _is_plus(n.inputs.get("adapter_name")) for n in result.new_nodes):
        report.note(PLUS_UNCOND_NOTE)
    if kind == "ui" and isinstance(data.get("definitions"), dict) and data["definitions"].get("subgraphs"):
        report.note("Nodes inside subgraphs are not converted; unpack the subgraphs first (right-click > Unpack).")
    return fmt.write(data, result), report


def _is_plus(name: Any) -> bool:
    """Plus, plus-face and full-face files, by their published names (only for the report's note)."""
    return isinstance(name, str) and any(tag in name.lower() for tag in ("plus", "face"))
