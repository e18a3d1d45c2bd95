"""IMAGE tensor helpers: channel handling and padding keep the picture, in ComfyUI's [B, H, W, C]."""

from __future__ import annotations

import pytest
import torch

from ipadapter_pack.utils.images import pad_to_square, to_rgb


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
