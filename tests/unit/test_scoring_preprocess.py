"""CLIP preprocessing of IMAGE tensors against open_clip's own PIL transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ipadapter_pack.ip_adapter.scoring.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    clip_preprocess,
    resized_size,
)
from PIL import Image


def _smooth_uint8(height: int, width: int, seed: int) -> np.ndarray:
    """A photo-like (smooth) random image, so resampling filters are compared where they matter."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, height // 8 + 1, width // 8 + 1, generator=g)
    img = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear").clamp(0, 1)
    return (img[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _ours(arr: np.ndarray, size: int = 224) -> torch.Tensor:
    return clip_preprocess(torch.from_numpy(arr.astype(np.float32) / 255.0)[None], size)[0]


@pytest.mark.parametrize("height,width", [(300, 400), (512, 384), (1000, 700), (100, 150)])
def test_matches_open_clips_eval_transform(height: int, width: int) -> None:
    import open_clip

    arr = _smooth_uint8(height, width, seed=height)
    theirs = open_clip.image_transform(224, is_train=False)(Image.fromarray(arr))
    ours = _ours(arr)
    assert ours.shape == theirs.shape == (3, 224, 224)
    diff = (ours - theirs).abs()
    # PIL resamples in 8 bits: differences are about one grey level (1/255/std ~ 0.015 normalised).
    assert diff.mean().item() < 0.01
    assert diff.max().item() < 0.03


def test_exact_for_inputs_already_at_the_model_size() -> None:
    import open_clip

    arr = (torch.rand(224, 224, 3, generator=torch.Generator().manual_seed(1)).numpy() * 255).astype(np.uint8)
    theirs = open_clip.image_transform(224, is_train=False)(Image.fromarray(arr))
    assert (_ours(arr) - theirs).abs().max().item() < 1e-6


def test_shapes_channels_and_normalisation() -> None:
    gray = torch.full((2, 50, 80, 1), 0.5)
    rgba = torch.cat([torch.full((2, 50, 80, 3), 0.5), torch.zeros(2, 50, 80, 1)], dim=-1)
    out = clip_preprocess(gray, 32)
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.float32
    assert torch.allclose(out, clip_preprocess(rgba, 32))
    expected = (0.5 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(out[0, :, 16, 16], expected, atol=1e-5)
    with pytest.raises(ValueError, match="IMAGE batch"):
        clip_preprocess(torch.zeros(0, 8, 8, 3))


def test_center_crop_keeps_the_middle() -> None:
    image = torch.zeros(1, 100, 300, 3)
    image[:, :, 100:200] = 1.0  # the middle third is white: exactly what a center crop keeps
    out = clip_preprocess(image, 100)  # shortest side is already 100: crop only
    white = (1.0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(out[0], white.view(3, 1, 1).expand(3, 100, 100), atol=1e-6)


def test_resized_size_truncates_like_torchvision() -> None:
    assert resized_size(512, 768, 224) == (224, 336)
    assert resized_size(700, 1000, 224) == (224, 320)
    assert resized_size(333, 222, 224) == (336, 224)
