"""The stability contract: workflows saved with release 0.1.0 keep loading, validating and meaning the same.

``tests/golden/<release>/`` holds the release's shipped workflows, frozen: the UI files (what
users saved) and their API twins (what scripts post). Never edit them; a later release adds its
own folder. Against the installed nodes, for every golden file:

* every node type is still registered, every link still joins an output and a socket of the
  same name and type;
* the saved ``widgets_values`` still fit: the frontend assigns them by position, so the node's
  widgets may only have grown at the end, and every widget added since is an optional input
  with a default (old files then load with the old behaviour);
* the UI file still converts to exactly the golden API graph (class types and inputs);
* the golden API prompt passes ComfyUI's own ``validate_prompt`` once its model files exist.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support import workflow_files as wf
from support.prompt_validation import validate_with_placeholder_files

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
RELEASES = sorted(p for p in GOLDEN.iterdir() if p.is_dir())
UI_FILES = [p for release in RELEASES for p in sorted(release.glob("*.json"))]
EXTRAS = ["nodes_canny.py", "nodes_mask.py"]


def ids(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


@pytest.fixture(scope="module")
def comfy_nodes(comfy, pack):
    comfy.load_builtin_extras(EXTRAS)
    return comfy


def test_a_release_is_frozen_with_ui_and_api_files() -> None:
    assert RELEASES, "no golden release under tests/golden"
    for release in RELEASES:
        ui = {p.name for p in release.glob("*.json")}
        assert ui and ui == {p.name for p in (release / "api").glob("*.json")}, release


def _layout_prefix(cls: type, node: dict, where: str) -> list[wf.Widget]:
    """The widgets the saved values fill; the rest must be new optional inputs with defaults."""
    layout = wf.widgets(cls)
    values = node.get("widgets_values", [])
    assert len(values) <= len(layout), f"{where}: {len(values)} saved values, node now has {len(layout)} widgets"
    optional = set(cls.INPUT_TYPES().get("optional") or {})
    for widget in layout[len(values):]:
        assert widget.is_input and (widget.name in optional or "default" in widget.options), (
            f"{where}: widget {widget.name!r} was added without a default (old workflows would break)")
    return layout[:len(values)]


@pytest.mark.parametrize("path", UI_FILES, ids=ids)
def test_golden_ui_workflow_still_loads_to_the_same_graph(comfy_nodes, path: Path) -> None:
    ui = wf.load(path)
    nodes = {n["id"]: n for n in ui["nodes"]}
    prompt = {}
    for node in ui["nodes"]:
        where = f"{ids(path)} node {node['id']} ({node['type']})"
        assert node["type"] in comfy_nodes.nodes.NODE_CLASS_MAPPINGS, f"{where}: node type no longer registered"
        cls = comfy_nodes.node_class(node["type"])
        layout = _layout_prefix(cls, node, where)
        inputs = {w.name: v for w, v in zip(layout, node.get("widgets_values", [])) if w.is_input}
        sockets = wf.socket_inputs(cls)
        for slot in node["inputs"]:
            if slot.get("link") is not None:
                assert sockets.get(slot["name"]) == slot["type"], f"{where}: socket {slot['name']!r} changed"
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    for _lid, src, src_slot, dst, dst_slot, _type in ui["links"]:
        out_type = wf.output_types(comfy_nodes.node_class(nodes[src]["type"]))[src_slot]
        assert out_type == nodes[dst]["inputs"][dst_slot]["type"], f"{ids(path)}: output {src}[{src_slot}] changed"
        prompt[str(dst)]["inputs"][nodes[dst]["inputs"][dst_slot]["name"]] = [str(src), src_slot]
    golden_api = wf.load(path.parent / "api" / path.name)
    assert {k: (v["class_type"], v["inputs"]) for k, v in prompt.items()} == {
        k: (v["class_type"], v["inputs"]) for k, v in golden_api.items()}


@pytest.mark.parametrize("path", UI_FILES, ids=ids)
def test_golden_api_prompt_still_validates(comfy_nodes, model_dirs, tmp_path, path: Path) -> None:
    prompt = wf.load(path.parent / "api" / path.name)
    outputs = validate_with_placeholder_files(comfy_nodes.folder_paths, prompt, model_dirs, tmp_path)
    assert {k for k, v in prompt.items() if v["class_type"] == "SaveImage"} <= set(outputs)
