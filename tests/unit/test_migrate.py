"""ip_adapter.migrate: ComfyUI_IPAdapter_plus workflows -> this pack's nodes, value by value.

The inputs are hand-written incumbent workflows in tests/data/migrate/{api,ui}/ (each mapped
node type with non-default values). No ComfyUI here: tests/integration/test_migrate_in_comfyui.py
validates and runs the converted files in a real one.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from ipadapter_pack.ip_adapter.migrate import MigrationError, convert, detect_format
from ipadapter_pack.ip_adapter.migrate.__main__ import main
from ipadapter_pack.ip_adapter.migrate.presets import PRESETS
from ipadapter_pack.ip_adapter.migrate.tables import INCUMBENT, OURS, UNMAPPED

DATA = Path(__file__).resolve().parents[1] / "data" / "migrate"
NAMES = ("unified_advanced", "loader_simple_prep", "embeds", "style_composition_sdxl", "batch_tiled_prep", "unmapped")
VIT_H = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
#: Issue 16's optional widgets, written with their defaults (the plain behaviour) unless a rule sets them.
ENCODE = {"crop_position": "center", "encode_chunk": 16}
FRAMES = {"weight_schedule": "constant", "end_weight": 1.0, "step_weights": "", "latent_weights": ""}


def load(kind: str, name: str) -> dict:
    return json.loads((DATA / kind / f"{name}.json").read_text())


def added(original: dict, converted: dict) -> dict:
    """{id: (class_type, inputs)} of the nodes the conversion added (ids not in the original)."""
    return {k: (v["class_type"], v["inputs"]) for k, v in converted.items() if k not in original}


# ---- what each incumbent node becomes (API format) --------------------------------------

def test_unified_loader_and_advanced() -> None:
    original = load("api", "unified_advanced")
    converted, report = convert(original)
    assert added(original, converted) == {
        "15": ("LoadIPAdapter", {"adapter_name": "ip-adapter_sd15.safetensors"}),
        "16": ("CLIPVisionLoader", {"clip_name": VIT_H}),
        "17": ("EncodeImagePrompt", {**ENCODE, "ip_adapter": ["15", 0], "clip_vision": ["16", 0], "image": ["7", 0],
                                     "fit": "center crop", "combine_embeds": "average", "image_weights": "",
                                     "negative_image": ["8", 0]}),
        "18": ("ApplyIPAdapter", {**FRAMES, "model": ["1", 0], "ip_adapter": ["15", 0], "image_prompt": ["17", 0], "weight": 0.7,
                                  "start_percent": 0.1, "end_percent": 0.9, "weight_type": "style transfer",
                                  "embeds_scaling": "K+V", "layer_weights": "", "attn_mask": ["9", 0]}),
    }
    assert "10" not in converted and "11" not in converted
    assert converted["12"]["inputs"]["model"] == ["18", 0]  # the sampler reads the new apply
    for node_id in ("1", "2", "5", "6", "7", "8", "9", "13", "14"):  # everything else untouched
        assert converted[node_id] == original[node_id]
    assert [(e.node, e.status) for e in report.entries] == [("10", "converted"), ("11", "converted")]
    assert not report.needs_incumbent


def test_model_loader_prep_image_and_simple_node() -> None:
    original = load("api", "loader_simple_prep")
    converted, report = convert(original)
    assert added(original, converted) == {
        "16": ("LoadIPAdapter", {"adapter_name": "ip-adapter_sd15.safetensors"}),
        "17": ("EncodeImagePrompt", {**ENCODE, "ip_adapter": ["16", 0], "clip_vision": ["7", 0], "image": ["5", 0], "fit": "pad",
                                     "combine_embeds": "concat", "image_weights": ""}),
        "18": ("ApplyIPAdapter", {**FRAMES, "model": ["1", 0], "ip_adapter": ["16", 0], "image_prompt": ["17", 0], "weight": 1.2,
                                  "start_percent": 0.0, "end_percent": 1.0, "weight_type": "ease in",
                                  "embeds_scaling": "K+V w/ C penalty", "layer_weights": ""}),
        "19": ("LoadIPAdapter", {"adapter_name": "ip-adapter_sd15.safetensors"}),
        "20": ("CLIPVisionLoader", {"clip_name": VIT_H}),
        "21": ("EncodeImagePrompt", {**ENCODE, "ip_adapter": ["19", 0], "clip_vision": ["20", 0], "image": ["5", 0],
                                     "fit": "center crop", "combine_embeds": "concat", "image_weights": ""}),
        # IPAdapter (simple): 'prompt is more important' is the incumbent's 'ease out'; the unified
        # loader's MODEL output passes the model through, so this apply chains onto the first.
        "22": ("ApplyIPAdapter", {**FRAMES, "model": ["18", 0], "ip_adapter": ["19", 0], "image_prompt": ["21", 0], "weight": 0.6,
                                  "start_percent": 0.2, "end_percent": 0.8, "weight_type": "ease out",
                                  "embeds_scaling": "V only", "layer_weights": "", "attn_mask": ["11", 0]}),
    }
    assert converted["13"]["inputs"]["model"] == ["22", 0]
    assert not ({"6", "8", "9", "10", "12"} & set(converted))
    assert converted["7"] == original["7"]  # ComfyUI's own CLIPVisionLoader stays and feeds the encoder
    assert {e.node: e.status for e in report.entries} == dict.fromkeys(("6", "8", "9", "10", "12"), "converted")


def test_encoder_combine_and_embeds_become_one_encode() -> None:
    original = load("api", "embeds")
    converted, report = convert(original)
    assert added(original, converted) == {
        "18": ("LoadIPAdapter", {"adapter_name": "ip-adapter_sd15.safetensors"}),
        "19": ("ImageBatch", {"image1": ["5", 0], "image2": ["6", 0]}),
        # encoder weights 0.8 and 1.2 -> one weight per image; the third encoder is the negative
        "20": ("EncodeImagePrompt", {**ENCODE, "ip_adapter": ["18", 0], "clip_vision": ["9", 0], "image": ["19", 0],
                                     "fit": "center crop", "combine_embeds": "norm average",
                                     "image_weights": "0.8, 1.2", "negative_image": ["7", 0]}),
        "21": ("ApplyIPAdapter", {**FRAMES, "model": ["1", 0], "ip_adapter": ["18", 0], "image_prompt": ["20", 0], "weight": 0.9,
                                  "start_percent": 0.05, "end_percent": 0.95, "weight_type": "weak input",
                                  "embeds_scaling": "K+mean(V) w/ C penalty", "layer_weights": ""}),
    }
    assert not ({"8", "10", "11", "12", "13", "14"} & set(converted))
    assert not report.needs_incumbent


def test_style_composition_is_two_applies_on_sdxl() -> None:
    original = load("api", "style_composition_sdxl")
    converted, report = convert(original)
    new = added(original, converted)
    assert [t for t, _ in new.values()] == ["LoadIPAdapter", "CLIPVisionLoader", "EncodeImagePrompt",
                                            "EncodeImagePrompt", "ApplyIPAdapter", "ApplyIPAdapter"]
    assert new["12"][1]["adapter_name"] == "ip-adapter-plus_sdxl_vit-h.safetensors"  # SDXL from the checkpoint name
    style_enc, comp_enc, style, comp = new["14"][1], new["15"][1], new["16"][1], new["17"][1]
    assert (style_enc["image"], comp_enc["image"]) == (["5", 0], ["6", 0])
    assert style_enc["combine_embeds"] == comp_enc["combine_embeds"] == "add"
    assert (style["image_prompt"], style["weight"], style["weight_type"]) == (["14", 0], 1.1, "strong style transfer")
    assert (comp["model"], comp["image_prompt"], comp["weight"], comp["weight_type"]) == (
        ["16", 0], ["15", 0], 0.8, "composition")
    assert style["end_percent"] == comp["end_percent"] == 0.9
    assert converted["9"]["inputs"]["model"] == ["17", 0]
    assert any("normalised" in n for n in report.notes)  # plus adapter: the unconditional difference is reported


def test_style_composition_on_sd15_is_left_as_the_incumbent_refuses_it() -> None:
    original = load("api", "style_composition_sdxl")
    original["1"]["inputs"]["ckpt_name"] = "dreamshaper_8.safetensors"
    converted, report = convert(original)
    left = {e.node: e.message for e in report.entries if e.status == "left"}
    assert "SDXL only" in left["8"]
    assert converted["8"]["class_type"] == "IPAdapterStyleComposition"
    # its loader is still read by the unconverted node, so it stays too
    assert converted["7"] == original["7"]


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("ckpt,base", [("v1-5-pruned-emaonly.safetensors", "sd15"), ("sd_xl_base_1.0.safetensors", "sdxl")])
def test_unified_presets_name_the_published_files(preset: str, ckpt: str, base: str) -> None:
    expected = {
        ("LIGHT - SD1.5 only (low strength)", "sd15"): ("ip-adapter_sd15_light_v11.bin", VIT_H),
        ("STANDARD (medium strength)", "sd15"): ("ip-adapter_sd15.safetensors", VIT_H),
        ("STANDARD (medium strength)", "sdxl"): ("ip-adapter_sdxl_vit-h.safetensors", VIT_H),
        ("VIT-G (medium strength)", "sd15"): ("ip-adapter_sd15_vit-G.safetensors",
                                              "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors"),
        ("VIT-G (medium strength)", "sdxl"): ("ip-adapter_sdxl.safetensors",
                                              "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors"),
        ("PLUS (high strength)", "sd15"): ("ip-adapter-plus_sd15.safetensors", VIT_H),
        ("PLUS (high strength)", "sdxl"): ("ip-adapter-plus_sdxl_vit-h.safetensors", VIT_H),
        ("PLUS FACE (portraits)", "sd15"): ("ip-adapter-plus-face_sd15.safetensors", VIT_H),
        ("PLUS FACE (portraits)", "sdxl"): ("ip-adapter-plus-face_sdxl_vit-h.safetensors", VIT_H),
        ("FULL FACE - SD1.5 only (portraits stronger)", "sd15"): ("ip-adapter-full-face_sd15.safetensors", VIT_H),
    }
    original = load("api", "unified_advanced")
    original["1"]["inputs"]["ckpt_name"] = ckpt
    original["10"]["inputs"]["preset"] = preset
    converted, report = convert(original)
    new = added(original, converted)
    if (preset, base) not in expected:
        assert converted["11"]["class_type"] == "IPAdapterAdvanced"
        assert "the incumbent refuses it too" in report.entries[0].message
        return
    assert (new["15"][1]["adapter_name"], new["16"][1]["clip_name"]) == expected[(preset, base)]


# ---- what is left alone, and why ----------------------------------------------------------

def test_unmapped_nodes_stay_and_every_incumbent_node_is_reported() -> None:
    original = load("api", "unmapped")
    converted, report = convert(original)
    incumbent = {k for k, v in original.items() if v["class_type"] in INCUMBENT or v["class_type"] in UNMAPPED}
    assert {e.node for e in report.entries} == incumbent
    status = {e.node: e.status for e in report.entries}
    assert status == {"6": "left", "7": "left", "8": "kept", "10": "left", "11": "left", "12": "kept", "13": "left",
                      "14": "left", "15": "left", "16": "left", "17": "converted"}
    for node_id, state in status.items():  # nothing dropped: left and kept nodes are still there, unchanged
        if state != "converted":
            assert converted[node_id] == original[node_id], node_id
    messages = {e.node: e.message for e in report.entries}
    assert "Save Image Prompt" in messages["13"] and "pickle" in messages["13"]
    assert "Load Image Prompt" in messages["14"]
    assert "InsightFace" in messages["7"]
    assert "sharpening 0.1" in messages["11"]  # IPAdapterTiled with sharpening: no counterpart
    assert "IPAdapterLoadEmbeds" in messages["15"]
    assert "outside this pack's range [-1, 3]" in messages["16"]
    assert report.needs_incumbent and "keep that pack installed" in report.text()
    # node 17 chains after the unconverted 16: its model input still reads it
    (apply,) = [v for k, v in converted.items() if v["class_type"] == "ApplyIPAdapter"]
    assert apply["inputs"]["model"] == ["16", 0]


@pytest.mark.parametrize("crop,sharpening", [("top", 0.2), ("center", 0.3)])
def test_prep_image_without_a_fit_here_is_left(crop: str, sharpening: float) -> None:
    original = load("api", "loader_simple_prep")
    original["8"]["inputs"].update(crop_position=crop, sharpening=sharpening)
    converted, report = convert(original)
    assert converted["8"] == original["8"]
    (encode, _) = [v["inputs"] for k, v in converted.items() if v["class_type"] == "EncodeImagePrompt"]
    assert encode["image"] == ["8", 0] and encode["fit"] == "center crop"
    assert next(e for e in report.entries if e.node == "8").status == "left"


def test_a_linked_mapped_widget_is_left_with_the_reason() -> None:
    original = load("api", "loader_simple_prep")
    original["12"]["inputs"]["weight_type"] = ["99", 0]
    original["99"] = {"class_type": "PrimitiveString", "inputs": {"value": "standard"}}
    converted, report = convert(original)
    assert converted["12"] == original["12"]
    assert "driven by a link" in next(e.message for e in report.entries if e.node == "12")


# ---- UI format: the same conversion, the look of the file kept -----------------------------

def _ui_as_api(ui: dict) -> dict:
    """{id: (type, named widgets of our nodes, links by input name)} of a UI workflow."""
    sources = {link[0]: (str(link[1]), link[2]) for link in ui["links"]}
    out = {}
    for node in ui["nodes"]:
        table = OURS.get(node["type"]) or INCUMBENT.get(node["type"])
        named = dict(zip(table.widgets, node["widgets_values"])) if table else {}
        for slot in node["inputs"]:
            if slot["link"] is not None:
                named[slot["name"]] = list(sources[slot["link"]])
        out[str(node["id"])] = (node["type"], named)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_ui_conversion_equals_the_api_conversion(name: str) -> None:
    api, _ = convert(load("api", name))
    ui, report = convert(load("ui", name))
    graph = _ui_as_api(ui)
    assert set(graph) == set(api)
    for node_id, (type_, named) in graph.items():
        assert type_ == api[node_id]["class_type"]
        expected = api[node_id]["inputs"]
        if type_ in OURS or type_ in INCUMBENT:
            assert named == expected, node_id
        else:  # ComfyUI's nodes: compare links only (their widget layouts are the frontend's)
            assert named == {k: v for k, v in expected.items() if isinstance(v, list)}, node_id
    assert report.text() == convert(load("api", name))[1].text()


@pytest.mark.parametrize("name", NAMES)
def test_converted_ui_file_is_consistent(name: str) -> None:
    original = load("ui", name)
    ui, _ = convert(original)
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert ui["last_node_id"] == max(nodes) and ui["last_link_id"] >= max(link[0] for link in ui["links"])
    for lid, src, slot, dst, dst_slot, type_ in ui["links"]:
        assert lid in nodes[src]["outputs"][slot]["links"]
        assert nodes[dst]["inputs"][dst_slot]["link"] == lid
        assert nodes[src]["outputs"][slot]["type"] == type_
        assert nodes[src]["order"] < nodes[dst]["order"]
    used = {s["link"] for n in nodes.values() for s in n["inputs"] if s["link"] is not None}
    assert used == {link[0] for link in ui["links"]}
    for node in nodes.values():
        if node["type"] in OURS:
            assert len(node["widgets_values"]) == len(OURS[node["type"]].widgets)
            assert node["properties"]["Node name for S&R"] == node["type"]
    kept = {n["id"]: n for n in original["nodes"] if n["id"] in nodes}
    for node_id, node in kept.items():  # untouched nodes keep their place and values
        assert (nodes[node_id]["pos"], nodes[node_id]["widgets_values"]) == (node["pos"], node["widgets_values"])
    assert ui["extra"] == original["extra"] and ui["groups"] == original["groups"]


def test_ui_nodes_take_the_old_place_and_mode() -> None:
    original = load("ui", "unified_advanced")
    by_id = {n["id"]: n for n in original["nodes"]}
    by_id[11]["mode"] = 4  # bypassed
    by_id[11]["title"] = "My style"
    ui, _ = convert(original)
    new = [n for n in ui["nodes"] if n["id"] > 14]
    assert [n["type"] for n in new] == ["LoadIPAdapter", "CLIPVisionLoader", "EncodeImagePrompt", "ApplyIPAdapter"]
    encode, apply = new[2], new[3]
    assert encode["pos"] == by_id[11]["pos"] and apply["pos"][0] == by_id[11]["pos"][0]
    assert apply["pos"][1] > encode["pos"][1]
    assert encode["mode"] == apply["mode"] == 4 and apply["title"] == "My style"


def test_ui_file_saved_before_embeds_scaling_gets_the_default_of_then() -> None:
    original = load("ui", "unified_advanced")
    node = next(n for n in original["nodes"] if n["type"] == "IPAdapterAdvanced")
    assert node["widgets_values"][-1] == "K+V"
    node["widgets_values"] = node["widgets_values"][:-1]  # saved before embeds_scaling existed
    converted, report = convert(original)
    apply = next(n for n in converted["nodes"] if n["type"] == "ApplyIPAdapter")
    assert apply["widgets_values"] == [0.7, 0.1, 0.9, "style transfer", "V only", "", *FRAMES.values()]
    assert "older release: embeds_scaling 'V only'" in next(e.message for e in report.entries if e.node == "11")


@pytest.mark.parametrize("values", [[0.7, "style transfer", "average", 0.1], [0.7, "linear", "concat", 0, 1, "V only", 3]])
def test_ui_widget_count_that_fits_no_release_is_reported(values: list) -> None:
    original = load("ui", "unified_advanced")
    node = next(n for n in original["nodes"] if n["type"] == "IPAdapterAdvanced")
    node["widgets_values"] = values
    converted, report = convert(original)
    kept = next(n for n in converted["nodes"] if n["id"] == node["id"])
    assert {k: v for k, v in kept.items() if k != "order"} == {k: v for k, v in node.items() if k != "order"}
    assert "do not match the last release" in next(e.message for e in report.entries if e.node == str(node["id"]))


def test_faceid_file_in_the_plain_loader_is_left() -> None:
    original = load("api", "loader_simple_prep")
    original["6"]["inputs"]["ipadapter_file"] = "ip-adapter-faceid-plusv2_sd15.bin"
    converted, report = convert(original)
    assert converted["6"] == original["6"] and converted["9"] == original["9"]
    assert "FaceID/Kolors" in next(e.message for e in report.entries if e.node == "6")


# ---- bad input: a clear error --------------------------------------------------------------

@pytest.mark.parametrize("data,message", [
    ([1, 2], "not a ComfyUI workflow: found list"),
    ({}, "not a ComfyUI workflow"),
    ({"foo": {"inputs": {}}}, "Expected the UI format"),
    ({"prompt": {"1": {"class_type": "X", "inputs": {}}}}, "/prompt request body"),
    ({"nodes": [{"id": 1}], "links": []}, "nodes[0] has no id or type"),
    ({"nodes": [{"id": 1, "type": "X", "inputs": [{"name": "a", "link": 9}]}], "links": []}, "link 9"),
    ({"nodes": [], "links": [[1, 2]]}, "links[0]"),
    ({"1": {"class_type": "A", "inputs": {"x": ["2", 0]}}, "2": {"class_type": "B", "inputs": {"y": ["1", 0]}}},
     "cycle"),
])
def test_broken_input_gives_a_clear_error(data, message: str) -> None:
    with pytest.raises(MigrationError, match=None) as caught:
        convert(data)
    assert message in str(caught.value)


def test_detect_format() -> None:
    assert detect_format(load("ui", "embeds")) == "ui"
    assert detect_format(load("api", "embeds")) == "api"


def test_command_line(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out.json"
    report = tmp_path / "report.json"
    assert main([str(DATA / "ui" / "embeds.json"), "-o", str(out), "--report", str(report)]) == 0
    assert json.loads(out.read_text()) == convert(load("ui", "embeds"))[0]
    assert {e["type"] for e in json.loads(report.read_text())["entries"]} >= {"IPAdapterEmbeds", "IPAdapterEncoder"}
    assert "CONVERTED" in capsys.readouterr().out

    broken = tmp_path / "broken.json"
    broken.write_text('{"nodes": [}')
    assert main([str(broken), "-o", str(out)]) == 2
    assert "is not JSON (line 1" in capsys.readouterr().err
    broken.write_text("[]")
    assert main([str(broken), "-o", str(out)]) == 2
    assert "not a ComfyUI workflow" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.json"), "-o", str(out)]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_conversion_does_not_change_its_input() -> None:
    for name in NAMES:
        for kind in ("api", "ui"):
            data = load(kind, name)
            before = copy.deepcopy(data)
            convert(data)
            assert data == before


def test_ui_reroute_between_loader_and_apply() -> None:
    """A legacy Reroute node on the ipadapter link: the apply is still converted, the reroute re-fed."""
    original = load("ui", "unified_advanced")
    nodes = {n["id"]: n for n in original["nodes"]}
    (link,) = [link for link in original["links"] if link[1] == 10 and link[2] == 1]  # loader.ipadapter -> 11
    reroute_in = max(lk[0] for lk in original["links"]) + 1
    original["nodes"].append({
        "id": 99, "type": "Reroute", "pos": [600, 600], "size": [75, 26], "flags": {}, "order": 99, "mode": 0,
        "inputs": [{"name": "", "type": "*", "link": reroute_in}],
        "outputs": [{"name": "", "type": "IPADAPTER", "links": [link[0]], "slot_index": 0}], "properties": {}})
    original["links"].append([reroute_in, 10, 1, 99, 0, "IPADAPTER"])
    nodes[10]["outputs"][1]["links"] = [reroute_in]
    link[1], link[2] = 99, 0
    ui, report = convert(original)
    assert {e.node: e.status for e in report.entries} == {"10": "converted", "11": "converted"}
    by_id = {n["id"]: n for n in ui["nodes"]}
    apply = next(n for n in ui["nodes"] if n["type"] == "ApplyIPAdapter")
    source = {lk[0]: lk for lk in ui["links"]}[next(s["link"] for s in apply["inputs"] if s["name"] == "ip_adapter")]
    assert by_id[source[1]]["type"] == "LoadIPAdapter"
    reroute_source = {lk[0]: lk for lk in ui["links"]}[by_id[99]["inputs"][0]["link"]]
    assert by_id[reroute_source[1]]["type"] == "LoadIPAdapter"
