"""Tiny CLIP vision towers built with ComfyUI's own `ClipVisionModel` class.

`comfy.clip_vision.load` only recognises full-size towers (it picks a config by
layer count), so fast tests build `ClipVisionModel(<config json>)` directly and
load a random HF-layout state dict into it: the same class, preprocessing and
`encode_image` that CLIPVisionLoader's output uses.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .clip_vision_files import (
    save_clip_vision_config,
    tiny_clip_vision_config,
    tiny_clip_vision_state_dict,
)


def tiny_comfy_clip_vision(folder: Path, *, hidden: int = 1280, projection_dim: int = 1024, seed: int = 0):
    """A ComfyUI ClipVisionModel with `hidden`-wide hidden states and `projection_dim` image_embeds."""
    import comfy.clip_vision

    config = tiny_clip_vision_config(hidden=hidden, projection_dim=projection_dim)
    path = save_clip_vision_config(config, Path(folder) / f"tiny_clip_{hidden}_{projection_dim}.json")
    model = comfy.clip_vision.ClipVisionModel(str(path))
    missing, unexpected = model.load_sd(tiny_clip_vision_state_dict(config, seed=seed))
    if missing or unexpected:
        raise RuntimeError(f"tiny CLIP vision keys: missing {missing}, unexpected {unexpected}")
    return model


def reference_features(clip_vision, image: torch.Tensor, feature: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond, uncond) CLIP features as the authors' pipeline defines them, from ComfyUI's encoder.

    cond: the feature of the center-cropped image. uncond: zeros for `image_embeds`;
    for hidden states, the encoding of an all-zero normalised pixel tensor.
    """
    import comfy.model_management

    with torch.inference_mode():
        cond = clip_vision.encode_image(image, crop=True)[feature].float()
        if feature == "image_embeds":
            return cond, torch.zeros_like(cond)
        comfy.model_management.load_model_gpu(clip_vision.patcher)
        zeros = torch.zeros(1, 3, clip_vision.image_size, clip_vision.image_size)
        uncond = clip_vision.model(pixel_values=zeros, intermediate_output=-2)[1].float()
    return cond, uncond.expand_as(cond)
