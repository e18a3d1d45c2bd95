"""Converted ComfyUI_IPAdapter_plus workflows against the real node registry, and running.

The incumbent workflows in tests/data/migrate/ are converted with `ip_adapter.migrate` (the
incumbent itself is never installed here). Then:

* the converter's tables of our nodes equal what the registry says (widget order, sockets,
  outputs), so UI files it writes line up with the frontend's widgets;
* every converted API file passes `execution.validate_prompt` once the named files exist;
* every converted UI file, read with the registry's widget layouts (`ui_to_api`, what
  "Export (API)" does), is the converted API graph;
* the SD1.5 ones run on a real ComfyUI server with tiny random-weight models.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import comfy_server as server_support
from support import workflow_files as wf
from support.pack import import_pack
from support.prompt_validation import validate_with_placeholder_files

# The pure converter, imported without ComfyUI (the repo root never goes on sys.path).
migrate = importlib.import_module(f"{import_pack().__name__}.ip_adapter.migrate")
TABLES = importlib.import_module(f"{import_pack().__name__}.ip_adapter.migrate.tables")
OURS = TABLES.OURS

DATA = Path(__file__).resolve().parents[1] / "data" / "migrate"
MAPPED = ("unified_advanced", "loader_simple_prep", "embeds", "style_composition_sdxl", "batch_tiled_prep")
SD15 = ("unified_advanced", "loader_simple_prep", "embeds", "batch_tiled_prep")
EXTRAS = ["nodes_mask.py"]  # SolidMask


def _converted(kind: str, name: str) -> dict:
    converted, report = migrate.convert(json.loads((DATA / kind / f"{name}.json").read_text()))
    assert not report.needs_incumbent, report.text()
    return converted


@pytest.fixture(scope="module")
def comfy_nodes(comfy, pack):
    comfy.load_builtin_extras(EXTRAS)
    return comfy


@pytest.mark.parametrize("node_type", sorted(OURS))
def test_converter_tables_match_the_registry(comfy_nodes, node_type: str) -> None:
    cls = comfy_nodes.node_class(node_type)
    table = OURS[node_type]
    assert tuple(w.name for w in wf.widgets(cls) if w.is_input) == table.widgets
    optional = set(cls.INPUT_TYPES().get("optional") or {})
    assert [(n, t, n in optional) for n, t in wf.socket_inputs(cls).items()] == list(table.sockets)
    assert wf.output_types(cls) == [t for _, t in table.outputs]


@pytest.mark.parametrize("node_type", sorted(OURS))
def test_converter_defaults_match_the_registry(comfy_nodes, node_type: str) -> None:
    """OUR_DEFAULTS is what a converted node carries for the widgets a rule leaves alone (the plain behaviour)."""
    for widget in wf.widgets(comfy_nodes.node_class(node_type)):
        if widget.is_input and "default" in widget.options:
            assert TABLES.OUR_DEFAULTS.get(widget.name, widget.options["default"]) == widget.options["default"], \
                f"{node_type}.{widget.name}"


@pytest.mark.parametrize("name", MAPPED)
def test_converted_api_file_validates(comfy_nodes, model_dirs, tmp_path, name: str) -> None:
    prompt = _converted("api", name)
    outputs = validate_with_placeholder_files(comfy_nodes.folder_paths, prompt, model_dirs, tmp_path)
    assert {k for k, v in prompt.items() if v["class_type"] == "SaveImage"} <= set(outputs)


@pytest.mark.parametrize("name", MAPPED)
def test_converted_ui_file_is_the_converted_api_graph(comfy_nodes, name: str) -> None:
    exported = wf.ui_to_api(comfy_nodes, _converted("ui", name))  # raises if a widget count is off
    api = _converted("api", name)
    assert set(exported) == set(api)
    for node_id, node in api.items():
        assert exported[node_id]["class_type"] == node["class_type"]
        assert exported[node_id]["inputs"] == node["inputs"], f"{name} node {node_id} ({node['class_type']})"




@pytest.mark.slow
@pytest.mark.parametrize("name", SD15)
def test_converted_workflow_runs(comfy_server, name: str) -> None:
    rng = np.random.default_rng(3)
    prompt = server_support.tiny_workflow(_converted("api", name))
    for node in prompt.values():
        if node["class_type"] == "LoadImage":
            Image.fromarray(rng.integers(0, 256, (72, 64, 3), dtype=np.uint8)).save(
                comfy_server.folder("input") / node["inputs"]["image"])
        if node["class_type"] == "SaveImage":
            node["inputs"]["filename_prefix"] = f"migrated_{name}"
    outputs = comfy_server.run_prompt(prompt)
    images = [entry for node in outputs.values() for entry in node.get("images", [])]
    latents = [n["inputs"]["batch_size"] for n in prompt.values() if n["class_type"] == "EmptyLatentImage"]
    assert len(images) == latents[0]  # batch_tiled_prep: two latents, one reference each
    pixels = np.asarray(Image.open(comfy_server.folder("output") / images[0]["subfolder"] / images[0]["filename"]))
    assert pixels.shape == (64, 64, 3)
