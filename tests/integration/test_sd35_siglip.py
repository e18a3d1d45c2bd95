"""ComfyUI's SigLIP-384 penultimate hidden states equal transformers' `hidden_states[-2]` (what diffusers' SD3 pipeline reads).

The same random weights go into ComfyUI's ClipVisionModel (the class Load CLIP Vision builds for
`clip_vision_siglip_384.json`, narrowed) and transformers' `SiglipVisionModel`. On identical pixel
values the features agree to float precision; through each side's preprocessing of the same
non-square image, "stretch" (a plain resize to 384 x 384, as `SiglipImageProcessor` does) is the
one that matches, up to the two bicubic implementations' rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import sd3_models

transformers = pytest.importorskip("transformers")


def _hf_twin(comfy_model):
    config = sd3_models.siglip_config()
    hf = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
        hidden_size=config["hidden_size"], intermediate_size=config["intermediate_size"],
        num_hidden_layers=config["num_hidden_layers"], num_attention_heads=config["num_attention_heads"],
        image_size=config["image_size"], patch_size=config["patch_size"], hidden_act=config["hidden_act"],
        vision_use_head=False))
    ours = {k.removeprefix("vision_model."): v for k, v in comfy_model.get_sd().items()}
    target = getattr(hf, "vision_model", hf)  # transformers 5 flattened the wrapper
    missing, unexpected = target.load_state_dict(ours, strict=False)
    assert not missing, missing
    return hf.eval()


def test_penultimate_hidden_states_match_transformers(comfy, tmp_path) -> None:
    clip_vision = sd3_models.tiny_comfy_siglip(tmp_path, seed=2)
    hf = _hf_twin(clip_vision)
    pixels = torch.randn(1, 3, 384, 384, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ours = clip_vision.model(pixel_values=pixels.to(clip_vision.dtype), intermediate_output="all")[1][:, -2]
        reference = hf(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
    assert ours.shape == (1, 729, 48)
    assert (ours.float() - reference).abs().max() < 1e-3 * max(1.0, float(reference.abs().max()))

    image = torch.rand(1, 240, 320, 3, generator=torch.Generator().manual_seed(1))
    processor = transformers.SiglipImageProcessor(size={"height": 384, "width": 384})
    with torch.inference_mode():
        pv = processor(images=(image[0].numpy() * 255).round().astype(np.uint8), return_tensors="pt").pixel_values
        reference = hf(pixel_values=pv, output_hidden_states=True).hidden_states[-2]
        quantised = torch.from_numpy((image[0].numpy() * 255).round() / 255).unsqueeze(0).float()
        stretch = clip_vision.encode_image(quantised, crop=False)["penultimate_hidden_states"].float()
        crop = clip_vision.encode_image(quantised, crop=True)["penultimate_hidden_states"].float()
    stretch_error, crop_error = (stretch - reference).abs().mean(), (crop - reference).abs().mean()
    print(f"\nSigLIP preprocessing vs SiglipImageProcessor: stretch {stretch_error:.2e}, center crop {crop_error:.2e}")
    assert stretch_error < 0.2 * crop_error
