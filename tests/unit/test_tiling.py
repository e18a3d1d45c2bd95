"""Non-square references: the square crop at a position, and square tiles that cover the whole image."""

from __future__ import annotations

import pytest
import torch
from ipadapter_pack.utils.tiling import crop_square, square_tiles, tile_count, tile_offsets


def numbered(height: int, width: int) -> torch.Tensor:
    """[1, H, W, 1] whose value is the pixel's row * 1000 + column (every pixel identifiable)."""
    rows = torch.arange(height).view(-1, 1) * 1000
    return (rows + torch.arange(width).view(1, -1)).float().view(1, height, width, 1)


@pytest.mark.parametrize("position,top,left", [("center", 20, 0), ("top", 0, 0), ("bottom", 40, 0),
                                               ("left", 20, 0), ("right", 20, 0)])
def test_crop_square_on_a_portrait(position, top, left) -> None:
    image = numbered(100, 60)
    crop = crop_square(image, position)
    assert crop.shape == (1, 60, 60, 1)
    assert crop[0, 0, 0, 0] == top * 1000 + left


@pytest.mark.parametrize("position,left", [("center", 30), ("left", 0), ("right", 60), ("top", 30)])
def test_crop_square_on_a_landscape(position, left) -> None:
    crop = crop_square(numbered(40, 100), position)
    assert crop.shape == (1, 40, 40, 1) and crop[0, 0, 0, 0] == left
    with pytest.raises(ValueError, match="crop position 'middle'"):
        crop_square(numbered(40, 100), "middle")


def test_tiles_cover_every_pixel_with_full_resolution_squares() -> None:
    assert tile_count(100, 60) == 2 and tile_count(64, 64) == 1 and tile_count(64, 160) == 3
    assert tile_offsets(160, 64, 3) == [0, 48, 96]
    image = torch.cat([numbered(64, 160), numbered(64, 160) + 0.5])  # two images, told apart by the .5
    tiles, count = square_tiles(image)
    assert count == 3 and tiles.shape == (6, 64, 64, 1)
    assert [float(t[0, 0, 0]) for t in tiles] == [0.0, 48.0, 96.0, 0.5, 48.5, 96.5]  # image-major order
    covered = torch.zeros(64, 160, dtype=torch.bool)
    for left in tile_offsets(160, 64, 3):
        covered[:, left:left + 64] = True
    assert bool(covered.all())
    portrait, count = square_tiles(numbered(100, 60))
    assert count == 2 and float(portrait[1, 0, 0, 0]) == 40 * 1000  # the last tile ends at the bottom edge


def test_a_square_image_is_its_own_single_tile() -> None:
    image = numbered(32, 32)
    tiles, count = square_tiles(image)
    assert count == 1 and torch.equal(tiles, image)
