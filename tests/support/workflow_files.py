"""Reading the shipped workflows the way ComfyUI's frontend does.

A UI-format workflow (what the frontend's "Save" writes) stores each node's widget values as a
positional list, ``widgets_values``, in the order the frontend creates widgets: the node's widget
inputs in ``INPUT_TYPES`` order (required, then optional), plus a few frontend-only widgets that
are saved but never sent to the server:

* an INT input with ``control_after_generate`` (or, for old nodes, named ``seed``/``noise_seed``)
  is followed by its "control after generate" combo (``"fixed"``, ``"randomize"``...);
* a combo with ``image_upload`` (``LoadImage``) is followed by the upload button, saved as
  ``"image"``.

``ui_to_api`` turns a UI workflow into the API prompt "Export (API)" writes, so a test can check
that a file in ``workflows/`` and its twin in ``workflows/api/`` describe the same graph.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS_DIR = REPO_ROOT / "workflows"
API_DIR = WORKFLOWS_DIR / "api"

#: Input types the frontend shows as widgets (a list type is an old-style combo).
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
CONTROL_AFTER_GENERATE = frozenset({"fixed", "increment", "decrement", "randomize"})
#: Widget inputs whose combo lists files on disk: widget name -> ComfyUI model folder.
MODEL_FILE_WIDGETS = {
    "ckpt_name": "checkpoints",
    "clip_name": "clip_vision",
    "adapter_name": "ipadapter",
    "control_net_name": "controlnet",
    "unet_name": "diffusion_models",
    "clip_name1": "text_encoders",
    "clip_name2": "text_encoders",
    "vae_name": "vae",
}


@dataclass(frozen=True)
class Widget:
    """One entry of ``widgets_values``: a real input (``input`` set) or a frontend-only extra."""

    name: str
    type: Any  # "INT", "FLOAT", ..., "COMBO", or a list of options (old-style combo)
    options: Mapping[str, Any]
    extra: str | None = None  # "control_after_generate" or "upload" for frontend-only widgets

    @property
    def is_input(self) -> bool:
        return self.extra is None

    def choices(self) -> list | None:
        if isinstance(self.type, list):
            return list(self.type)
        if self.type == "COMBO":
            return list(self.options.get("options", []))
        return None


def input_types(cls: type) -> dict[str, tuple[Any, Mapping[str, Any]]]:
    """``{name: (type, options)}`` for the node's required then optional inputs."""
    spec = cls.INPUT_TYPES()
    out = {}
    for section in ("required", "optional"):
        for name, entry in (spec.get(section) or {}).items():
            out[name] = (entry[0], entry[1] if len(entry) > 1 else {})
    return out


def is_widget(type_: Any, options: Mapping[str, Any]) -> bool:
    if options.get("forceInput"):
        return False
    return isinstance(type_, list) or type_ in WIDGET_TYPES


def widgets(cls: type) -> list[Widget]:
    """The node's ``widgets_values`` layout, as the frontend builds it."""
    out = []
    for name, (type_, options) in input_types(cls).items():
        if not is_widget(type_, options):
            continue
        out.append(Widget(name, type_, options))
        if type_ == "INT" and (options.get("control_after_generate") or name in ("seed", "noise_seed")):
            out.append(Widget(name, "COMBO", {"options": sorted(CONTROL_AFTER_GENERATE)}, "control_after_generate"))
        if options.get("image_upload"):
            out.append(Widget(name, "COMBO", {"options": ["image"]}, "upload"))
    return out


def socket_inputs(cls: type) -> dict[str, str]:
    """``{name: type}`` of the inputs that take links (not widgets)."""
    return {
        name: type_ for name, (type_, options) in input_types(cls).items() if not is_widget(type_, options)
    }


def output_types(cls: type) -> list[str]:
    return list(cls.RETURN_TYPES)


def output_names(cls: type) -> list[str]:
    names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
    return list(names)


def display_name(comfy: Any, node_type: str) -> str:
    return comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS.get(node_type, node_type)


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def ui_workflows() -> list[Path]:
    return sorted(WORKFLOWS_DIR.glob("*.json"))


def api_twin(path: Path) -> Path:
    return API_DIR / path.name


def named_widget_values(cls: type, node: Mapping[str, Any]) -> dict[str, Any]:
    """``{input name: value}`` from a UI node's ``widgets_values`` (frontend-only extras dropped)."""
    layout = widgets(cls)
    values = node.get("widgets_values", [])
    if len(values) != len(layout):
        raise ValueError(
            f"node {node['id']} ({node['type']}): {len(values)} widgets_values, the installed node has "
            f"{len(layout)} widgets {[w.extra or w.name for w in layout]}"
        )
    return {w.name: v for w, v in zip(layout, values) if w.is_input}


def ui_to_api(comfy: Any, ui: Mapping[str, Any]) -> dict[str, dict]:
    """The API prompt for a UI workflow (what "Export (API)" writes), node ids as strings."""
    links = {link[0]: link for link in ui["links"]}
    prompt = {}
    for node in sorted(ui["nodes"], key=lambda n: n["id"]):
        if node.get("mode", 0) != 0:
            continue
        cls = comfy.node_class(node["type"])
        inputs: dict[str, Any] = dict(named_widget_values(cls, node))
        for slot in node.get("inputs", []):
            if slot.get("link") is None:
                continue
            _, src, src_slot, _, _, _ = links[slot["link"]]
            inputs[slot["name"]] = [str(src), src_slot]
        prompt[str(node["id"])] = {
            "class_type": node["type"],
            "inputs": inputs,
            "_meta": {"title": node.get("title") or display_name(comfy, node["type"])},
        }
    return prompt


def assert_same_api_graph(actual: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    """Two API-format prompts describe the same graph: node ids, class types, inputs and titles."""
    assert set(actual) == set(expected), "node ids differ"
    for node_id, node in expected.items():
        got = actual[node_id]
        assert got["class_type"] == node["class_type"], f"node {node_id}"
        assert got["inputs"] == node["inputs"], f"node {node_id} ({node['class_type']}) inputs differ"
        assert got.get("_meta", {}).get("title") == node["_meta"]["title"], f"node {node_id} title"
