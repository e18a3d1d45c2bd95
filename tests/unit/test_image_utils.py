"""IMAGE tensor helpers: channel handling and padding keep the picture, in ComfyUI's [B, H, W, C]."""

from __future__ import annotations

import pytest
import torch
from ipadapter_pack.utils.images import (
    LARGE_SIDE,
    check_image_batch,
    pad_to_square,
    shrink_for_encoder,
    to_rgb,
)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_to_rgb_gives_three_channels_and_keeps_the_colour_planes(channels: int) -> None:
    image = torch.rand(2, 5, 7, channels)
    rgb = to_rgb(image)
    assert rgb.shape == (2, 5, 7, 3)
    if channels >= 3:
        assert torch.equal(rgb, image[..., :3])
    else:
        assert torch.equal(rgb[..., 1], image[..., 0]) and torch.equal(rgb[..., 2], image[..., 0])


def test_to_rgb_rejects_other_channel_counts() -> None:
    with pytest.raises(ValueError, match="5 channels"):
        to_rgb(torch.rand(1, 2, 2, 5))


@pytest.mark.parametrize("height,width", [(4, 10), (10, 4), (6, 6), (1, 2)])
def test_pad_to_square_centres_the_image(height: int, width: int) -> None:
    image = torch.rand(1, height, width, 3) + 1.0
    padded = pad_to_square(image)
    side = max(height, width)
    assert padded.shape == (1, side, side, 3)
    top, left = (side - height) // 2, (side - width) // 2
    assert torch.equal(padded[:, top:top + height, left:left + width], image)
    assert padded.sum() == pytest.approx(image.sum().item())  # the rest is zero


@pytest.mark.parametrize("shape", [(1, LARGE_SIDE, LARGE_SIDE, 3), (2, 512, 384, 3), (1, 1, 1, 3), (1, 40, LARGE_SIDE, 4)])
@pytest.mark.parametrize("crop", [True, False])
def test_normal_size_images_reach_the_encoder_untouched(shape, crop: bool) -> None:
    """The same object comes back: results for these sizes cannot differ from ComfyUI's own preprocessing."""
    image = torch.rand(*shape)
    assert shrink_for_encoder(image, 224, crop) is image


@pytest.mark.parametrize("height,width,crop", [(LARGE_SIDE + 1, 300, True), (300, 5000, True), (4000, 3000, False)])
def test_large_images_become_the_encoder_input_size(height: int, width: int, crop: bool) -> None:
    image = torch.full((2, height, width, 3), 0.25)
    small = shrink_for_encoder(image, 224, crop)
    assert small.shape == (2, 224, 224, 3)
    torch.testing.assert_close(small, torch.full_like(small, 0.25))  # a flat image stays flat


def test_large_crop_keeps_the_centre() -> None:
    image = torch.zeros(1, 3000, 9000, 3)
    image[:, :, 2500:6500] = 1.0  # white around the centre third, which is all the crop keeps
    small = shrink_for_encoder(image, 224, crop=True)
    assert small.min() > 0.99


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_pixels_are_refused_by_name(value: float) -> None:
    image = torch.rand(2, 8, 8, 3)
    image[1, 3, 4, 0] = value
    with pytest.raises(ValueError, match=r"ScoreImagePrompt: 'images' has NaN or infinite pixel values"):
        check_image_batch(image, "ScoreImagePrompt", "images")
    assert check_image_batch(torch.rand(1, 2, 2, 3), "ScoreImagePrompt", "images") is not None
