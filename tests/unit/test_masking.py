"""Attention masks on each layer's token grid: aspect ratio, odd sizes, batches, caching."""

from __future__ import annotations

import pytest
import torch
from ipadapter_pack.ip_adapter.errors import ImagePromptError
from ipadapter_pack.ip_adapter.masking import (
    MaskCache,
    check_mask,
    mask_rows,
    token_grid,
)

CPU = torch.device("cpu")


@pytest.mark.parametrize("height,width,expected", [
    (64, 96, [(64, 96), (32, 48), (16, 24), (8, 12)]),
    (13, 21, [(13, 21), (7, 11), (4, 6), (2, 3)]),  # odd sizes: the UNet rounds up at each stride-2 step
    (9, 9, [(9, 9), (5, 5), (3, 3), (2, 2)]),
])
def test_token_grid_follows_the_unets_ceil_halving(height, width, expected) -> None:
    for rows, cols in expected:
        assert token_grid(height, width, rows * cols) == (rows, cols)


def test_token_grid_estimates_a_grid_that_fits_no_depth() -> None:
    rows, cols = token_grid(64, 128, 100)  # not a UNet grid: aspect-ratio estimate
    assert rows * cols <= 100 + cols and cols >= rows


def _half(height: int = 64, width: int = 96, left: bool = True) -> torch.Tensor:
    mask = torch.zeros(1, height, width)
    mask[..., : width // 2] = 1.0
    return mask if left else 1.0 - mask


def test_half_mask_lands_on_the_left_half_of_every_grid() -> None:
    for rows, cols in [(16, 24), (8, 12), (7, 11)]:
        out = mask_rows(_half(), (1, 4, rows, cols), rows * cols, 2, 1, CPU, torch.float32)
        grid = out.view(2, rows, cols)
        assert out.shape == (2, rows * cols, 1)
        assert torch.equal(grid[0], grid[1])  # cond and uncond rows share the mask
        assert (grid[0, :, : cols // 2 - 1] > 0.99).all() and (grid[0, :, cols // 2 + 1:] < 0.01).all()


def test_a_mask_of_another_size_is_resized_not_refused() -> None:
    small = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # 2x2, left column on
    out = mask_rows(check_mask(small), (1, 4, 16, 24), 16 * 24, 1, 1, CPU, torch.float32).view(16, 24)
    assert out[:, 0].min() == 1.0 and out[:, -1].max() == 0.0


def test_one_mask_broadcasts_and_a_batch_maps_per_latent() -> None:
    shape, tokens = (3, 4, 8, 8), 64
    one = mask_rows(torch.ones(1, 8, 8), shape, tokens, 2, 3, CPU, torch.float32)
    assert one.shape == (6, 64, 1) and bool((one == 1).all())
    per_latent = torch.stack([torch.full((8, 8), float(i)) for i in range(3)])
    rows = mask_rows(per_latent, shape, tokens, 2, 3, CPU, torch.float32)[:, 0, 0]
    assert rows.tolist() == [0.0, 1.0, 2.0, 0.0, 1.0, 2.0]  # chunk-major: [uncond b0..b2, cond b0..b2]


def test_a_mask_count_that_fits_no_batch_is_refused_by_name() -> None:
    with pytest.raises(ImagePromptError, match=r"attn_mask: 2 masks for a batch of 3 latents"):
        mask_rows(torch.ones(2, 8, 8), (3, 4, 8, 8), 64, 1, 3, CPU, torch.float32)


@pytest.mark.parametrize("bad,message", [
    (torch.ones(1, 1, 8, 8), r"attn_mask: expected a MASK \[H, W\] or \[batch, H, W\], got \(1, 1, 8, 8\)"),
    (torch.tensor([[float("nan")]]), r"attn_mask: the mask contains NaN"),
    ("mask", r"attn_mask: expected a MASK .* got str"),
])
def test_check_mask_refuses_what_is_not_a_mask(bad, message) -> None:
    with pytest.raises(ImagePromptError, match=message):
        check_mask(bad)


def test_check_mask_gives_a_float_batch_on_the_cpu() -> None:
    out = check_mask(torch.ones(8, 8, dtype=torch.float16))
    assert out.shape == (1, 8, 8) and out.dtype == torch.float32 and out.device == CPU


def test_cache_reuses_the_resized_mask_per_layout_and_keeps_a_few_layouts() -> None:
    cache = MaskCache(_half())
    first = cache.get([2, 4, 16, 24], 384, 2, 2, CPU, torch.float32)
    assert cache.get([2, 4, 16, 24], 384, 2, 2, CPU, torch.float32) is first  # same storage every step
    other_layer = cache.get([2, 4, 16, 24], 96, 2, 2, CPU, torch.float32)
    assert other_layer.shape == (4, 96, 1) and cache.get([2, 4, 16, 24], 384, 2, 2, CPU, torch.float32) is first
    cond_alone = cache.get([2, 4, 16, 24], 384, 1, 2, CPU, torch.float32)  # cond and uncond sent separately
    assert cond_alone.shape == (2, 384, 1) and cache.get([2, 4, 16, 24], 384, 2, 2, CPU, torch.float32) is first
    resized = cache.get([2, 4, 32, 24], 768, 2, 2, CPU, torch.float32)
    assert resized.shape == (4, 768, 1) and cache.get([2, 4, 16, 24], 384, 2, 2, CPU, torch.float32) is first
    for height in (40, 48, 56, 64):  # more new layouts than the cache keeps: the oldest goes
        cache.get([2, 4, height, 24], 96, 2, 2, CPU, torch.float32)
    assert cache.get([2, 4, 16, 24], 384, 2, 2, CPU, torch.float32) is not first
