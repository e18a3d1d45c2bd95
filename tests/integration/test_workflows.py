"""The shipped workflows: UI files open in ComfyUI, their API twins match them and validate.

For each ``workflows/<name>.json`` (what the frontend's "Save" writes) and its twin
``workflows/api/<name>.json`` (what "Export (API)" writes):

* every node type is registered in ComfyUI's ``NODE_CLASS_MAPPINGS``;
* every widget value fits the installed node's schema (combo options, number ranges), model-file
  combos excepted: their options are the files on disk, so they are checked against the published
  file names instead;
* every link joins an output and an input of the same type, and the link table agrees with the
  nodes' own ``inputs[].link`` / ``outputs[].links``;
* the API twin is the same graph (node ids, class types, widget values by name, links);
* the API twin passes ``execution.validate_prompt`` once the named model files exist;
* ComfyUI's ``/workflow_templates`` route lists the UI files for this pack.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from support import workflow_files as wf
from support.comfy_harness import REPO_ROOT
from support.prompt_validation import validate_with_placeholder_files

UI_WORKFLOWS = wf.ui_workflows()
EXPECTED = {
    "sd15_image_prompt", "sdxl_image_prompt", "sd15_plus_image_text", "sd15_image_prompt_controlnet",
    "sd15_img2img_image_prompt", "sd15_two_adapters", "sd15_inpaint_image_prompt", "sd15_regional_masks",
    "sdxl_style_transfer", "flux_image_prompt", "sd35_image_prompt", "sd15_per_latent_batch",
    "sd15_non_square_reference",
}
#: comfy_extras modules whose nodes the workflows use (not registered by ``nodes.py`` itself).
EXTRAS = ["nodes_canny.py", "nodes_mask.py", "nodes_sd3.py"]

#: The names the files are published under (README table; Hugging Face h94/IP-Adapter,
#: runwayml/stable-diffusion-v1-5, stabilityai/stable-diffusion-xl-base-1.0,
#: lllyasviel/ControlNet-v1-1, laion/CLIP-ViT-H-14-laion2B-s32B-b79K).
PUBLISHED = {
    "checkpoints": {"v1-5-pruned-emaonly.safetensors", "sd_xl_base_1.0.safetensors", "sd3.5_large.safetensors"},
    # Flux (black-forest-labs/FLUX.1-dev, comfyanonymous/flux_text_encoders, XLabs-AI/flux-ip-adapter; OpenAI's
    # clip-vit-large-patch14 model.safetensors under a descriptive name). SD3.5: stabilityai/stable-diffusion-3.5-large
    # (clip_g too), InstantX/SD3.5-Large-IP-Adapter, Comfy-Org's SigLIP-384 vision file.
    "diffusion_models": {"flux1-dev.safetensors"},
    "text_encoders": {"clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"},
    "vae": {"ae.safetensors"},
    "clip_vision": {
        "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors",
        "clip-vit-large-patch14.safetensors", "sigclip_vision_patch14_384.safetensors",
    },
    "ipadapter": {
        "ip-adapter_sd15.safetensors", "ip-adapter_sd15_light.safetensors", "ip-adapter_sd15_vit-G.safetensors",
        "ip-adapter-plus_sd15.safetensors", "ip-adapter-plus-face_sd15.safetensors",
        "ip-adapter-full-face_sd15.safetensors", "ip-adapter_sdxl.safetensors",
        "ip-adapter_sdxl_vit-h.safetensors", "ip-adapter-plus_sdxl_vit-h.safetensors",
        "ip-adapter-plus-face_sdxl_vit-h.safetensors", "flux-ip-adapter.safetensors",
        "ip-adapter_sd35_large_instantx.bin",
    },
    "controlnet": {"control_v11p_sd15_canny.safetensors"},
}
UI_KEYS = {"last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra", "version"}
NODE_KEYS = {"id", "type", "pos", "size", "flags", "order", "mode", "inputs", "outputs", "properties",
             "widgets_values"}

def ids(path):
    return path.stem


@pytest.fixture(scope="module")
def comfy_nodes(comfy, pack):
    comfy.load_builtin_extras(EXTRAS)
    return comfy


def test_the_promised_workflows_ship_with_api_twins() -> None:
    names = {p.stem for p in UI_WORKFLOWS}
    assert EXPECTED <= names, f"missing UI workflows: {sorted(EXPECTED - names)}"
    twins = {p.stem for p in wf.API_DIR.glob("*.json")}
    assert names == twins, f"UI without API twin: {sorted(names - twins)}; API without UI: {sorted(twins - names)}"


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=ids)
def test_ui_file_has_the_frontend_save_format(path: Path) -> None:
    ui = wf.load(path)
    assert UI_KEYS <= set(ui), f"missing top-level keys {sorted(UI_KEYS - set(ui))}"
    assert ui["version"] == 0.4
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert len(nodes) == len(ui["nodes"]), "duplicate node ids"
    assert ui["last_node_id"] == max(nodes)
    link_ids = [link[0] for link in ui["links"]]
    assert len(set(link_ids)) == len(link_ids), "duplicate link ids"
    assert ui["last_link_id"] >= max(link_ids)
    assert sorted(n["order"] for n in nodes.values()) == list(range(len(nodes)))
    for node in nodes.values():
        assert NODE_KEYS <= set(node), f"node {node['id']} lacks {sorted(NODE_KEYS - set(node))}"
        assert node["properties"].get("Node name for S&R") == node["type"]
        assert node["mode"] == 0
        assert len(node["pos"]) == 2 and len(node["size"]) == 2
        for i, out in enumerate(node["outputs"]):
            assert out["slot_index"] == i
    for lid, src, src_slot, dst, dst_slot, _type in ui["links"]:
        assert lid in nodes[src]["outputs"][src_slot]["links"], f"link {lid} missing from node {src} outputs"
        assert nodes[dst]["inputs"][dst_slot]["link"] == lid, f"link {lid} missing from node {dst} inputs"
        # Linked nodes run in order: a node's order is after all its sources'.
        assert nodes[src]["order"] < nodes[dst]["order"]
    used = {slot["link"] for n in nodes.values() for slot in n["inputs"] if slot["link"] is not None}
    assert used == set(link_ids), "inputs reference links that are not in the link table (or vice versa)"


def test_layout_has_no_overlapping_nodes() -> None:
    for path in UI_WORKFLOWS:
        boxes = [(n["id"], *n["pos"], *n["size"]) for n in wf.load(path)["nodes"]]
        for i, (a, ax, ay, aw, ah) in enumerate(boxes):
            for b, bx, by, bw, bh in boxes[i + 1:]:
                title = 30  # the title bar sits above pos
                overlap = ax < bx + bw and bx < ax + aw and ay - title < by + bh and by - title < ay + ah
                assert not overlap, f"{path.name}: nodes {a} and {b} overlap"


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=ids)
def test_node_types_are_registered(comfy_nodes, path: Path) -> None:
    missing = {n["type"] for n in wf.load(path)["nodes"]} - set(comfy_nodes.nodes.NODE_CLASS_MAPPINGS)
    assert not missing, f"node types unknown to ComfyUI: {sorted(missing)}"


def _check_widget(widget: wf.Widget, value, where: str) -> None:
    if widget.extra == "control_after_generate":
        assert value in wf.CONTROL_AFTER_GENERATE, f"{where}: control_after_generate {value!r}"
        return
    if widget.extra == "upload":
        assert value == "image", f"{where}: upload widget {value!r}"
        return
    folder = wf.MODEL_FILE_WIDGETS.get(widget.name)
    if folder is not None:
        assert value in PUBLISHED[folder], f"{where}: {value!r} is not a published {folder} file name"
        return
    if widget.options.get("image_upload"):  # LoadImage: a file the user picks from input/
        assert isinstance(value, str) and value.endswith(".png"), f"{where}: {value!r}"
        return
    choices = widget.choices()
    if choices is not None:
        assert value in choices, f"{where}: {value!r} not in {choices}"
        return
    if widget.type == "STRING":
        assert isinstance(value, str), f"{where}: {value!r} is not a string"
        return
    if widget.type == "BOOLEAN":
        assert isinstance(value, bool), f"{where}: {value!r} is not a boolean"
        return
    assert widget.type in ("INT", "FLOAT"), f"{where}: unexpected widget type {widget.type!r}"
    kinds = (int,) if widget.type == "INT" else (int, float)
    assert isinstance(value, kinds) and not isinstance(value, bool), f"{where}: {value!r} is not {widget.type}"
    lo, hi = widget.options.get("min"), widget.options.get("max")
    assert lo is None or value >= lo, f"{where}: {value} < min {lo}"
    assert hi is None or value <= hi, f"{where}: {value} > max {hi}"


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=ids)
def test_widget_values_fit_the_installed_schemas(comfy_nodes, path: Path) -> None:
    for node in wf.load(path)["nodes"]:
        cls = comfy_nodes.node_class(node["type"])
        layout = wf.widgets(cls)
        values = node["widgets_values"]
        where = f"{path.name} node {node['id']} ({node['type']})"
        assert len(values) == len(layout), (
            f"{where}: {len(values)} widgets_values for widgets {[w.extra or w.name for w in layout]}"
        )
        for widget, value in zip(layout, values):
            _check_widget(widget, value, f"{where} {widget.extra or widget.name}")


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=ids)
def test_links_join_matching_types(comfy_nodes, path: Path) -> None:
    ui = wf.load(path)
    nodes = {n["id"]: n for n in ui["nodes"]}
    for lid, src, src_slot, dst, dst_slot, type_ in ui["links"]:
        out_type = wf.output_types(comfy_nodes.node_class(nodes[src]["type"]))[src_slot]
        slot = nodes[dst]["inputs"][dst_slot]
        in_type = wf.socket_inputs(comfy_nodes.node_class(nodes[dst]["type"])).get(slot["name"])
        assert in_type is not None, f"{path.name} link {lid}: node {dst} has no socket input {slot['name']!r}"
        assert type_ == out_type == in_type == slot["type"] == nodes[src]["outputs"][src_slot]["type"], (
            f"{path.name} link {lid}: {nodes[src]['type']}[{src_slot}] {out_type} -> "
            f"{nodes[dst]['type']}.{slot['name']} {in_type} (link says {type_})"
        )
    for node in nodes.values():  # every required socket is connected
        cls = comfy_nodes.node_class(node["type"])
        required = cls.INPUT_TYPES()["required"]
        connected = {s["name"] for s in node["inputs"] if s["link"] is not None}
        missing = {name for name in wf.socket_inputs(cls) if name in required} - connected
        assert not missing, f"{path.name} node {node['id']} ({node['type']}): unconnected {sorted(missing)}"


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=ids)
def test_api_twin_is_the_same_graph(comfy_nodes, path: Path) -> None:
    expected = wf.ui_to_api(comfy_nodes, wf.load(path))
    api = wf.load(wf.api_twin(path))
    wf.assert_same_api_graph(api, expected)


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=ids)
def test_api_twin_passes_comfyui_validation(comfy_nodes, model_dirs, tmp_path, path: Path) -> None:
    prompt = wf.load(wf.api_twin(path))
    outputs = validate_with_placeholder_files(comfy_nodes.folder_paths, prompt, model_dirs, tmp_path,
                                              ("checkpoints", "diffusion_models", "text_encoders", "vae"))
    save_nodes = {k for k, v in prompt.items() if v["class_type"] == "SaveImage"}
    assert save_nodes and save_nodes <= set(outputs)


def test_comfyui_lists_the_workflows_as_templates(comfy_nodes, tmp_path) -> None:
    """Runs ComfyUI's own ``/workflow_templates`` handler and static route set-up
    (``app/custom_node_manager.py``, ``CustomNodeManager.add_routes``) on a ``custom_nodes``
    folder holding this pack. It scans ``custom_nodes/*/<name>/*.json`` for ``name`` in
    ``example_workflows, example, examples, workflow, workflows``: ``workflows/`` is accepted
    (logged at debug level with a hint to rename it ``example_workflows``), and only top-level
    files count, so the ``api/`` twins are not listed as templates. ``test_frontend.py`` checks the
    same from a real server and in the frontend's template browser.
    """
    from aiohttp import web
    from app.custom_node_manager import CustomNodeManager

    fp = comfy_nodes.folder_paths
    custom_nodes = tmp_path / "custom_nodes"
    custom_nodes.mkdir()
    installed = custom_nodes / "comfyui-ip-adapter"
    os.symlink(REPO_ROOT, installed, target_is_directory=True)
    saved = list(fp.folder_names_and_paths["custom_nodes"][0])
    fp.folder_names_and_paths["custom_nodes"][0][:] = [str(custom_nodes)]
    try:
        routes = web.RouteTableDef()
        app = web.Application()
        CustomNodeManager().add_routes(routes, app, [(installed.name, str(installed))])
        handler = next(r.handler for r in routes if getattr(r, "path", None) == "/workflow_templates")
        response = asyncio.run(handler(None))
    finally:
        fp.folder_names_and_paths["custom_nodes"][0][:] = saved
    listed = json.loads(response.body)
    assert sorted(listed.get(installed.name, [])) == sorted(p.stem for p in UI_WORKFLOWS)
    static = [r for r in app.router.resources() if r.canonical == f"/api/workflow_templates/{installed.name}"]
    assert static, "no static route serves the pack's workflow files"
    assert Path(static[0].get_info()["directory"]).resolve() == (REPO_ROOT / "workflows").resolve()
