"""Bad images, encoders, models and schedules (README "Bad input" catalogue), through ComfyUI's real executor.

Refused inputs fail in the node that received them, with a message naming that
node, the input and the fix; odd but usable images are accepted and converted.
After each case the same executor still runs a good prompt exactly as a fresh one.
"""

from __future__ import annotations

import pytest
import torch
from support import unets
from support.bad_input import ENCODER, GOOD_ADAPTER, graph, write_adapter


@pytest.fixture(autouse=True)
def good_adapter(model_dirs) -> None:
    write_adapter(model_dirs, GOOD_ADAPTER, "ip-adapter_sd15")


def _clip(comfy):
    return comfy.nodes.NODE_CLASS_MAPPINGS["IPABadClipH"].value


# ------------------------------------------------------------------------------- models, encoders

def test_adapter_for_the_other_base_model_is_refused(served, model_dirs) -> None:
    sdxl_adapter = write_adapter(model_dirs, "sdxl_vit-h.safetensors", "ip-adapter_sdxl_vit-h")
    served.refused(graph(sdxl_adapter), "ApplyIPAdapter",
                   r"ApplyIPAdapter: 'sdxl_vit-h\.safetensors' is a SDXL adapter .*looks like SD1\.5\)\. "
                   r"Load a SDXL checkpoint, or pick an adapter made for this model", "ImagePromptError")
    served.values.add("IPABadSDXL", "MODEL", unets.comfy_sdxl_model(seed=1))
    served.refused(graph(model="IPABadSDXL"), "ApplyIPAdapter",
                   rf"ApplyIPAdapter: '{GOOD_ADAPTER}' is a SD1\.5 adapter .*looks like SDXL\)\. "
                   r"Load a SD1\.5 checkpoint", "ImagePromptError")
    served.still_serves(model_dirs)


def test_clip_vision_of_the_wrong_width_names_the_encoder(served, model_dirs) -> None:
    bigg_adapter = write_adapter(model_dirs, "sdxl_bigg.safetensors", "ip-adapter_sdxl")  # ViT-bigG, 1280 wide
    served.refused(graph(bigg_adapter), "EncodeImagePrompt",
                   r"EncodeImagePrompt: 'sdxl_bigg\.safetensors' needs the ViT-bigG/14 CLIP vision model .*width "
                   r"1024\. Load CLIP-ViT-bigG-14-laion2B-39B-b160k\.safetensors with CLIPVisionLoader",
                   "ImagePromptError")
    served.still_serves(model_dirs)


def test_prompt_from_another_adapter_kind_is_refused(served, model_dirs) -> None:
    plus = write_adapter(model_dirs, "plus_sd15.safetensors", "ip-adapter-plus_sd15")
    prompt = graph()
    prompt["11"] = {"class_type": "LoadIPAdapter", "inputs": {"adapter_name": plus}}
    prompt["9"]["inputs"]["ip_adapter"] = ["11", 0]
    served.refused(prompt, "ApplyIPAdapter", r"encoded for a SD1\.5 base .*Encode with the same adapter",
                   "ImagePromptError")
    served.still_serves(model_dirs)


# ----------------------------------------------------------------------------------------- images

def test_empty_image_batch_is_refused(served, model_dirs) -> None:
    empty = served.image("empty", torch.zeros(0, 64, 64, 3))
    served.refused(graph(image=empty), "EncodeImagePrompt",
                   r"EncodeImagePrompt: 'image' is an empty image batch; connect at least one image")
    served.still_serves(model_dirs)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_non_finite_pixels_are_refused(served, model_dirs, value) -> None:
    pixels = torch.rand(1, 64, 64, 3)
    pixels[0, 10, 20, 1] = value
    name = served.image(f"nonfinite_{value}", pixels)
    served.refused(graph(image=name), "EncodeImagePrompt",
                   r"EncodeImagePrompt: 'image' has NaN or infinite pixel values; fix or replace the node")
    served.still_serves(model_dirs)


def _tokens(served, name: str, pixels: torch.Tensor, fit: str) -> torch.Tensor:
    """The image prompt's tokens (the run stops at the encoder: only encoding is under test here)."""
    result = served.runner.run(graph(image=served.image(name, pixels), fit=fit), targets=[ENCODER])
    return result.output(ENCODER).cond


@pytest.mark.parametrize("fit", ["center crop", "pad", "stretch"])
def test_odd_images_are_accepted_and_converted(served, model_dirs, fit) -> None:
    """1x1 pixels, RGBA, grayscale (with and without alpha) and very wide images run; alpha is dropped
    and gray is repeated into R, G and B, so they encode exactly as the RGB image they show."""
    g = torch.Generator().manual_seed(3)
    rgb, gray = torch.rand(2, 40, 56, 3, generator=g), torch.rand(1, 40, 56, 1, generator=g)
    key = fit.replace(" ", "_")
    expected_rgb = _tokens(served, f"rgb_{key}", rgb, fit)
    rgba = torch.cat([rgb, torch.rand(2, 40, 56, 1, generator=g)], dim=-1)
    assert torch.equal(_tokens(served, f"rgba_{key}", rgba, fit), expected_rgb)
    expected_gray = _tokens(served, f"gray_as_rgb_{key}", gray.repeat(1, 1, 1, 3), fit)
    assert torch.equal(_tokens(served, f"gray_{key}", gray, fit), expected_gray)
    gray_alpha = torch.cat([gray, torch.zeros_like(gray)], dim=-1)
    assert torch.equal(_tokens(served, f"gray_alpha_{key}", gray_alpha, fit), expected_gray)
    for name, pixels in (("1x1", torch.rand(1, 1, 1, 3, generator=g)), ("wide", torch.rand(1, 8, 300, 3))):
        tokens = _tokens(served, f"{name}_{key}", pixels, fit)
        assert tokens.shape == (1, 4, 768) and torch.isfinite(tokens).all()
    served.still_serves(model_dirs)


@pytest.mark.parametrize("height,width,fit", [(8000, 8000, "center crop"), (2101, 3111, "center crop"),
                                              (3111, 2101, "stretch")])
def test_very_large_image_is_shrunk_before_the_encoder(comfy, served, model_dirs, monkeypatch, height, width,
                                                       fit) -> None:
    """ComfyUI would copy the full image to the encoder's device and resize it there. The pack resizes it
    first, on the CPU, so only 224 x 224 pixels reach the encoder, and the features are bit-identical to
    ComfyUI's own preprocessing of the full image (on the CPU, where both resize with the same op)."""
    clip = _clip(comfy)
    encode, seen = clip.encode_image, []

    def recording_encode(image, crop=True):
        output = encode(image, crop=crop)
        seen.append((tuple(image.shape), output["image_embeds"]))
        return output

    monkeypatch.setattr(clip, "encode_image", recording_encode)
    pixels = torch.rand(1, height, width, 3, generator=torch.Generator().manual_seed(5))
    tokens = _tokens(served, f"huge_{height}x{width}_{fit}", pixels, fit)
    assert [shape for shape, _ in seen] == [(1, 224, 224, 3)]
    reference = encode(pixels, crop=fit != "stretch")["image_embeds"]  # ComfyUI alone, full resolution
    assert torch.equal(seen[0][1], reference)
    assert tokens.shape == (1, 4, 768) and torch.isfinite(tokens).all()
    del pixels
    served.still_serves(model_dirs)


def test_start_after_end_is_refused(served, model_dirs) -> None:
    served.refused(graph(start=0.8, end=0.2), "ApplyIPAdapter",
                   r"ApplyIPAdapter: start_percent \(0\.8\) is after end_percent \(0\.2\); set start_percent <= "
                   r"end_percent", "ImagePromptError")
    served.still_serves(model_dirs)
