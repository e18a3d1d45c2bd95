"""The real-server fixture: ComfyUI starts with only this pack, loads the tiny models, runs a graph."""

from __future__ import annotations

import json
import time

import numpy as np
from PIL import Image
from support import comfy_server as server_support


def test_server_loads_only_this_pack_and_runs_the_sd15_workflow(comfy_server):
    object_info = comfy_server.get_json("/object_info")
    assert {"LoadIPAdapter", "EncodeImagePrompt", "ApplyIPAdapter", "TinyCLIPVisionLoader"} <= set(object_info)
    custom_nodes = comfy_server.folder("custom_nodes")
    assert sorted(p.name for p in custom_nodes.iterdir()) == sorted(server_support.DEFAULT_PACKS)
    choices = object_info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    assert server_support.CHECKPOINT_NAME in choices

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        comfy_server.folder("input") / "reference.png")
    workflow = json.loads((server_support.REPO_ROOT / "workflows/api/sd15_image_prompt.json").read_text())
    workflow = server_support.tiny_workflow(workflow)
    workflow["12"]["inputs"]["filename_prefix"] = "smoke"
    status, body = comfy_server.post_json("/prompt", {"prompt": workflow})
    assert status == 200, body
    prompt_id = body["prompt_id"]
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        history = comfy_server.get_json(f"/history/{prompt_id}")
        if prompt_id in history:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"prompt did not finish in 240 s:\n{comfy_server.log()[-3000:]}")
    entry = history[prompt_id]
    assert entry["status"]["status_str"] == "success", entry["status"]
    (image,) = entry["outputs"]["12"]["images"]
    pixels = np.asarray(Image.open(comfy_server.folder("output") / image["subfolder"] / image["filename"]))
    assert pixels.shape == (64, 64, 3) and pixels.std() > 1.0
    # ComfyUI loads checkpoints with strict=False and only logs what it could not fill.
    for warning in ("unet missing", "unet unexpected", "clip missing", "Missing VAE keys", "missing clip vision"):
        assert warning not in comfy_server.log(), warning
