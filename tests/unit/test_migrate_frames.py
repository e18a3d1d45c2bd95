"""ip_adapter.migrate for the incumbent's per-latent and tiled nodes and crop positions, value by value.

IPAdapterBatch -> combine_embeds 'one per latent'; IPAdapterTiled -> fit 'tiled';
PrepImageForClipVision top/bottom/left/right -> crop_position. The input is the hand-written
tests/data/migrate/{api,ui}/batch_tiled_prep.json (non-default values everywhere);
tests/integration/test_migrate_in_comfyui.py validates and runs its conversion in a real ComfyUI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ipadapter_pack.ip_adapter.migrate import convert
from ipadapter_pack.ip_adapter.migrate.tables import UNMAPPED, WEIGHTS_LEFT

DATA = Path(__file__).resolve().parents[1] / "data" / "migrate"
VIT_H = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
FRAMES = {"weight_schedule": "constant", "end_weight": 1.0, "step_weights": "", "latent_weights": ""}


def load(kind: str) -> dict:
    return json.loads((DATA / kind / "batch_tiled_prep.json").read_text())


def added(original: dict, converted: dict) -> dict:
    return {k: (v["class_type"], v["inputs"]) for k, v in converted.items() if k not in original}


def status(report) -> dict:
    return {e.node: (e.status, e.message) for e in report.entries}


def test_batch_tiled_and_prep_crop_position() -> None:
    original = load("api")
    converted, report = convert(original)
    assert added(original, converted) == {
        "17": ("LoadIPAdapter", {"adapter_name": "ip-adapter_sd15.safetensors"}),
        # IPAdapterBatch: its images (prepped with crop_position 'top') one per latent; encode_batch_size 4
        "18": ("EncodeImagePrompt", {"ip_adapter": ["17", 0], "clip_vision": ["9", 0], "image": ["7", 0],
                                     "fit": "center crop", "crop_position": "top", "combine_embeds": "one per latent",
                                     "image_weights": "", "encode_chunk": 4, "negative_image": ["6", 0]}),
        "19": ("ApplyIPAdapter", {**FRAMES, "model": ["1", 0], "ip_adapter": ["17", 0], "image_prompt": ["18", 0],
                                  "weight": 0.8, "start_percent": 0.1, "end_percent": 0.9, "weight_type": "ease in",
                                  "embeds_scaling": "K+V", "layer_weights": "", "attn_mask": ["12", 0]}),
        # IPAdapterTiled: the raw image, fit 'tiled'
        "20": ("EncodeImagePrompt", {"ip_adapter": ["17", 0], "clip_vision": ["9", 0], "image": ["5", 0],
                                     "fit": "tiled", "crop_position": "center", "combine_embeds": "concat",
                                     "image_weights": "", "encode_chunk": 16}),
        "21": ("ApplyIPAdapter", {**FRAMES, "model": ["19", 0], "ip_adapter": ["17", 0], "image_prompt": ["20", 0],
                                  "weight": 0.6, "start_percent": 0.2, "end_percent": 1.0,
                                  "weight_type": "style transfer", "embeds_scaling": "K+mean(V) w/ C penalty",
                                  "layer_weights": "", "attn_mask": ["12", 0]}),
    }
    assert converted["14"]["inputs"]["model"] == ["21", 0]
    assert not ({"8", "10", "11", "13"} & set(converted))
    states = status(report)
    assert {k: s for k, (s, _) in states.items()} == dict.fromkeys(("8", "10", "11", "13"), "converted")
    assert "repeats the last reference" in states["11"][1]  # the count rule that differs is reported
    assert "each 256 px tile only on its own area" in states["13"][1]
    assert not report.needs_incumbent


def test_batch_encode_batch_size_zero_is_the_default_chunk() -> None:
    original = load("api")
    original["11"]["inputs"]["encode_batch_size"] = 0  # the incumbent's "all in one call"
    converted, _ = convert(original)
    assert converted["18"]["inputs"]["encode_chunk"] == 16


def test_batch_weight_from_ipadapter_weights_goes_to_latent_weights_list() -> None:
    original = load("api")
    original["30"] = {"class_type": "IPAdapterWeights", "inputs": {
        "weights": "1.0, 0.2", "timing": "linear", "frames": 0, "start_frame": 0, "end_frame": 9999,
        "add_starting_frames": 0, "add_ending_frames": 0, "method": "full batch", "image": ["7", 0]}}
    original["11"]["inputs"]["weight"] = ["30", 0]
    converted, report = convert(original)
    (apply,) = [inputs for kind, inputs in added(original, converted).values()
                if kind == "ApplyIPAdapter" and inputs["model"] == ["1", 0]]
    assert (apply["weight"], apply["latent_weights_list"], apply["latent_weights"]) == (1.0, ["30", 0], "")
    assert converted["30"] == original["30"]  # the weights node stays (no node here computes its strategies)
    assert status(report)["30"] == ("left", WEIGHTS_LEFT)
    assert report.needs_incumbent


@pytest.mark.parametrize("position", ["top", "bottom", "left", "right"])
def test_prep_crop_positions(position: str) -> None:
    original = load("api")
    original["10"]["inputs"]["crop_position"] = position
    converted, _ = convert(original)
    assert (converted["18"]["inputs"]["fit"], converted["18"]["inputs"]["crop_position"]) == ("center crop", position)


@pytest.mark.parametrize("change,reason", [
    ({"sharpening": 0.25}, "sharpening 0.25"),
    ({"combine_embeds": "average"}, "combine_embeds 'average'"),
    ({"image_negative": ["6", 0]}, "its image_negative"),
    ({"image": ["10", 0]}, "PrepImageForClipVision"),
    ({"weight": 4.0}, "outside this pack's range"),
])
def test_tiled_left_with_the_reason(change: dict, reason: str) -> None:
    original = load("api")
    original["13"]["inputs"].update(change)
    converted, report = convert(original)
    assert converted["13"]["inputs"] == {**original["13"]["inputs"], "model": ["19", 0]}  # reads the converted batch
    state, message = status(report)["13"]
    assert state == "left" and reason in message
    assert all(v["inputs"].get("fit") != "tiled" for v in converted.values())


def test_tiled_tiles_output_in_use_keeps_the_node_beside() -> None:
    original = load("api")
    original["31"] = {"class_type": "PreviewImage", "inputs": {"images": ["13", 1]}}
    converted, report = convert(original)
    kept = converted["13"]["inputs"]
    # it reads the converted batch's apply (a MODEL either way) and still the incumbent loader (kept for it)
    assert kept == {**original["13"]["inputs"], "model": kept["model"]}
    assert converted[kept["model"][0]]["class_type"] == "ApplyIPAdapter"
    assert converted["8"] == original["8"]
    assert {k: s for k, (s, _) in status(report).items()} == {"8": "kept", "10": "converted", "11": "converted",
                                                             "13": "kept"}
    assert converted["14"] == original["14"]  # the sampler still reads the kept node
    assert report.needs_incumbent


def test_ui_file_saved_before_encode_batch_size_gets_the_default_of_then() -> None:
    original = load("ui")
    node = next(n for n in original["nodes"] if n["type"] == "IPAdapterBatch")
    assert node["widgets_values"] == [0.8, "ease in", 0.1, 0.9, "K+V", 4]
    node["widgets_values"] = node["widgets_values"][:-1]
    converted, _ = convert(original)
    encode = next(n for n in converted["nodes"] if n["type"] == "EncodeImagePrompt")
    # fit, combine_embeds, image_weights, crop_position, encode_chunk (0 then: one call -> our default chunk)
    assert encode["widgets_values"] == ["center crop", "one per latent", "", "top", 16]


def test_nodes_now_mapped_are_no_longer_unmapped() -> None:
    assert not {"IPAdapterBatch", "IPAdapterTiled"} & set(UNMAPPED)
    assert all("issue 16" not in why for why in UNMAPPED.values())


def test_ui_batch_weight_link_becomes_the_latent_weights_list_socket() -> None:
    ui = load("ui")
    ui["nodes"].append({"id": 30, "type": "IPAdapterWeights", "pos": [0, 2000], "size": [315, 200], "flags": {},
                        "order": 0, "mode": 0, "inputs": [{"name": "image", "type": "IMAGE", "link": None, "shape": 7}],
                        "outputs": [{"name": "weights", "type": "FLOAT", "links": [40], "slot_index": 0}],
                        "properties": {}, "widgets_values": ["1.0, 0.2", "linear", 0, 0, 9999, 0, 0, "full batch"]})
    batch = next(n for n in ui["nodes"] if n["type"] == "IPAdapterBatch")
    batch["inputs"].append({"name": "weight", "type": "FLOAT", "widget": {"name": "weight"}, "link": 40})
    ui["links"].append([40, 30, 0, batch["id"], len(batch["inputs"]) - 1, "FLOAT"])
    converted, _ = convert(ui)
    apply = next(n for n in converted["nodes"] if n["type"] == "ApplyIPAdapter")
    assert apply["widgets_values"] == [1.0, 0.1, 0.9, "ease in", "K+V", "", *FRAMES.values()]
    (link,) = [link for link in converted["links"] if link[1] == 30]
    socket = apply["inputs"][link[4]]
    assert (link[3], socket["name"], socket["link"], link[5]) == (apply["id"], "latent_weights_list", link[0], "FLOAT")
