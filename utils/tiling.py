"""Non-square references: a square crop at a chosen position, or square tiles over the whole image.

Why: CLIP vision sees a square. Center crop keeps the middle of a 4:5 portrait and
cuts a head near the top edge; pad keeps everything but shrinks the subject and adds
bars; stretch distorts. Two more ways:

* crop position: the square is cut at the top, bottom, left or right instead of the
  middle, when the subject sits there (the head of a portrait: top).
* tiled: squares with the short side as their side, spread evenly along the long side
  (overlapping where the ratio is not whole), so every pixel lies in a tile at full
  resolution; each tile is encoded and their tokens are put side by side.

IMAGE tensors are [B, H, W, C] floats, as ComfyUI passes them.
"""

from __future__ import annotations

import math

from torch import Tensor

#: Where the square of 'center crop' is cut.
CROP_POSITIONS = ("center", "top", "bottom", "left", "right")


def crop_square(image: Tensor, position: str = "center") -> Tensor:
    """The largest square of [B, H, W, C] at `position`; top/bottom move it along the height, left/right the width.

    A position along the short side has no effect (e.g. 'left' on a portrait): it falls back to the center there.
    """
    if position not in CROP_POSITIONS:
        raise ValueError(f"crop position '{position}'; choose one of {list(CROP_POSITIONS)}")
    _, height, width, _ = image.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    if position == "top":
        top = 0
    elif position == "bottom":
        top = height - side
    elif position == "left":
        left = 0
    elif position == "right":
        left = width - side
    return image[:, top:top + side, left:left + side]


def tile_count(height: int, width: int) -> int:
    """How many short-side squares cover the long side: ceil(long / short) (1 for a square)."""
    return math.ceil(max(height, width) / min(height, width))


def tile_offsets(length: int, side: int, count: int) -> list[int]:
    """`count` start offsets of `side`-long tiles spread evenly from 0 to length - side."""
    if count == 1:
        return [(length - side) // 2]
    return [round(i * (length - side) / (count - 1)) for i in range(count)]


def square_tiles(image: Tensor) -> tuple[Tensor, int]:
    """[B, H, W, C] -> ([B * k, s, s, C] tiles, image-major, k) with s the short side.

    A square image is one tile (itself), so 'tiled' on square references is plain encoding.
    """
    batch, height, width, channels = image.shape
    side = min(height, width)
    count = tile_count(height, width)
    if height >= width:
        tiles = [image[:, top:top + side, :] for top in tile_offsets(height, side, count)]
    else:
        tiles = [image[:, :, left:left + side] for left in tile_offsets(width, side, count)]
    stacked = tiles[0].new_empty(batch, count, side, side, channels)
    for index, tile in enumerate(tiles):
        stacked[:, index] = tile
    return stacked.reshape(batch * count, side, side, channels), count
