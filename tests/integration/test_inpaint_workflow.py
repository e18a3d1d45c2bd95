"""The shipped inpainting workflow runs on a real ComfyUI server and inpaints only the mask.

``workflows/api/sd15_inpaint_image_prompt.json`` is queued twice through ``POST /prompt`` on the
session's real server (``comfy_server`` fixture: tiny random-weight models in the real layouts),
as shipped apart from the tiny-model adaptations of ``tiny_workflow``, with two different
reference images and the same seed. A ``SaveLatent`` node added after the sampler records the
sampled latents. The mask comes the way a user paints it: the transparent hole of the image to
inpaint (``LoadImage`` turns alpha into its MASK output).

Inside the masked area the two latents differ (the image prompt acts there); outside it they
are identical (``InpaintModelConditioning``'s noise mask keeps the original latent there).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file
from support import comfy_server as server_support

pytestmark = pytest.mark.slow

WORKFLOW = server_support.REPO_ROOT / "workflows" / "api" / "sd15_inpaint_image_prompt.json"
SIZE = 64  # pixels; the latent is 8x8
HOLE = slice(16, 48)  # transparent square in the middle: mask = 1 there


def _write_inputs(input_dir) -> None:
    rng = np.random.default_rng(7)
    for name in ("inpaint_ref_a.png", "inpaint_ref_b.png"):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(input_dir / name)
    target = np.concatenate(
        [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), np.full((SIZE, SIZE, 1), 255, np.uint8)], axis=2)
    target[HOLE, HOLE, 3] = 0
    Image.fromarray(target, "RGBA").save(input_dir / "inpaint_target.png")


def _prompt(reference: str, tag: str) -> dict:
    prompt = server_support.tiny_workflow(json.loads(WORKFLOW.read_text()))
    loaders = {n["_meta"]["title"]: n for n in prompt.values() if n["class_type"] == "LoadImage"}
    loaders["Reference image"]["inputs"]["image"] = reference
    loaders["Image and mask to inpaint"]["inputs"]["image"] = "inpaint_target.png"
    (sampler_id,) = [k for k, n in prompt.items() if n["class_type"] == "KSampler"]
    (save_id,) = [k for k, n in prompt.items() if n["class_type"] == "SaveImage"]
    prompt[save_id]["inputs"]["filename_prefix"] = f"inpaint_test_{tag}"
    prompt["900"] = {"class_type": "SaveLatent",
                     "inputs": {"samples": [sampler_id, 0], "filename_prefix": f"latents/inpaint_test_{tag}"}}
    return prompt




def _latent(server, outputs: dict) -> np.ndarray:
    (saved,) = outputs["900"]["latents"]
    return load_file(str(server.folder("output") / saved["subfolder"] / saved["filename"]))["latent_tensor"]


def test_inpaint_workflow_changes_only_the_masked_area(comfy_server) -> None:
    _write_inputs(comfy_server.folder("input"))
    out_a = comfy_server.run_prompt(_prompt("inpaint_ref_a.png", "a"))
    out_b = comfy_server.run_prompt(_prompt("inpaint_ref_b.png", "b"))
    for outputs in (out_a, out_b):
        (image,) = [entry for node in outputs.values() for entry in node.get("images", [])]
        pixels = np.asarray(Image.open(comfy_server.folder("output") / image["subfolder"] / image["filename"]))
        assert pixels.shape[:2] == (SIZE, SIZE)
    a, b = _latent(comfy_server, out_a), _latent(comfy_server, out_b)
    assert a.shape == b.shape == (1, 4, SIZE // 8, SIZE // 8)
    inside = (slice(None), slice(None), slice(3, 5), slice(3, 5))  # latent cells fully in the hole
    outside = np.ones(a.shape[2:], bool)
    outside[1:7, 1:7] = False  # the border ring, away from the bilinear edge of the mask
    assert np.abs(a[inside] - b[inside]).max() > 1e-4, "the reference image had no effect inside the mask"
    np.testing.assert_array_equal(a[..., outside], b[..., outside])
