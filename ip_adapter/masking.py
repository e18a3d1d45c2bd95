"""Attention masks: confine the image term to a region of the latent.

The mask multiplies the image term per query token, so the reference acts only
inside it (1 = full strength, 0 = none, values in between blend). Each
cross-attention layer sees the latent on its own token grid; the mask is
resized to that grid with bilinear interpolation, as the reference pack does.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .devices import same_device
from .errors import ImagePromptError
from .layout_cache import LayoutCache


def check_mask(mask: Tensor, where: str = "attn_mask") -> Tensor:
    """A MASK as [masks, H, W] float32 on the CPU; a clear error naming `where` for anything else."""
    if not isinstance(mask, Tensor) or mask.ndim not in (2, 3) or mask.numel() == 0:
        shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ImagePromptError(f"{where}: expected a MASK [H, W] or [batch, H, W], got {shape}.")
    if not mask.is_floating_point():
        mask = mask.float()
    if not torch.isfinite(mask).all():
        raise ImagePromptError(f"{where}: the mask contains NaN or infinity.")
    mask = mask if mask.ndim == 3 else mask.unsqueeze(0)
    return mask.detach().to(device="cpu", dtype=torch.float32).contiguous()


def token_grid(height: int, width: int, tokens: int) -> tuple[int, int]:
    """(rows, cols) of the token grid a layer sees for a latent of height x width.

    The UNet halves the latent with stride-2 convolutions that round up
    (ceil(n / 2)), so a layer's grid is ceil(H / 2^d) x ceil(W / 2^d) for some
    depth d; odd sizes are exact this way. For grids that fit no depth (another
    architecture), the reference's estimate: rows from the aspect ratio, rounded up.
    """
    for depth in range(12):
        rows, cols = math.ceil(height / 2 ** depth), math.ceil(width / 2 ** depth)
        if rows * cols == tokens:
            return rows, cols
        if rows * cols < tokens:
            break
    rows = max(1, int(height / math.sqrt(height * width / tokens)))
    rows += int(tokens % rows != 0)
    return rows, max(1, tokens // rows)


def mask_rows(mask: Tensor, original_shape: tuple[int, ...] | list[int], tokens: int, chunks: int, batch: int,
              device: torch.device, dtype: torch.dtype, where: str = "attn_mask") -> Tensor:
    """The mask as a per-token factor matching ComfyUI's q batch: [chunks * batch, tokens, 1].

    `mask` is [1 or batch, H, W]; one mask serves every latent, `batch` masks map
    one per latent. Cond and uncond chunks use the same mask.
    """
    if mask.shape[0] not in (1, batch):
        raise ImagePromptError(
            f"{where}: {mask.shape[0]} masks for a batch of {batch} latents; give one mask "
            f"(used for every latent) or exactly {batch} (one per latent)."
        )
    rows, cols = token_grid(int(original_shape[-2]), int(original_shape[-1]), tokens)
    resized = torch.nn.functional.interpolate(mask.unsqueeze(1), size=(rows, cols), mode="bilinear")
    flat = resized.reshape(mask.shape[0], rows * cols)
    if rows * cols != tokens:  # estimated grid: pad or crop the middle, as the reference does
        excess = rows * cols - tokens
        flat = flat[:, excess // 2: excess // 2 + tokens] if excess > 0 else torch.nn.functional.pad(
            flat, (-excess // 2, -excess - (-excess // 2)))
    flat = flat.expand(batch, tokens).repeat(chunks, 1)
    return flat.unsqueeze(-1).to(device=device, dtype=dtype).contiguous()


class MaskCache:
    """`mask_rows` memoised by layout: sampling steps then allocate no mask.

    Keyed by layout (latent size, chunks, batch, device, dtype) and token count;
    all layers with the same token count share one entry. A few layouts are kept
    (see `LayoutCache`), so cond and uncond sent in separate calls reuse theirs.
    """

    def __init__(self, mask: Tensor, where: str = "attn_mask") -> None:
        self.mask = mask
        self.where = where
        self._rows: LayoutCache[Tensor] = LayoutCache()

    def get(self, original_shape: tuple[int, ...] | list[int], tokens: int, chunks: int, batch: int,
            device: torch.device, dtype: torch.dtype, frames: tuple[int, ...] | None = None) -> Tensor:
        """`frames`: the masks of a context window's frames (indices into the masks), None for all."""
        layout = (int(original_shape[-2]), int(original_shape[-1]), chunks, batch, device, dtype, frames)
        masks = self.mask if frames is None else self.mask[list(frames)]
        return self._rows.get(layout, tokens, lambda: mask_rows(masks, original_shape, tokens, chunks, batch,
                                                                  device, dtype, self.where))

    def release_except(self, device: torch.device) -> None:
        """Forget the rows held on other devices."""
        self._rows.drop(lambda layout: not same_device(layout[4], device))
