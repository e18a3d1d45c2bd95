"""CLIP's image preprocessing for ComfyUI IMAGE tensors ([B, H, W, C] floats in 0..1).

The scores must be comparable with the papers' numbers, so the steps are CLIP's
evaluation transform (OpenAI `clip.load`, open_clip `image_transform(is_train=False)`):
resize the shortest side to the model's input size with bicubic filtering, center
crop a square, normalise with OpenAI's mean and std. Resizing uses torch's
antialiased bicubic, which follows PIL's filter closely (not bit-exactly).
"""

from __future__ import annotations

import torch
from torch import Tensor

#: OpenAI CLIP's normalisation, also used by every OpenCLIP ViT model this pack scores with.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


def to_rgb(images: Tensor) -> Tensor:
    """[B, H, W, C] with C in 1..4 -> [B, H, W, 3]: drop alpha, repeat gray."""
    channels = images.shape[-1]
    if channels in (3, 4):
        return images[..., :3]
    if channels in (1, 2):  # gray, gray + alpha
        return images[..., :1].expand(*images.shape[:-1], 3)
    raise ValueError(f"an IMAGE with {channels} channels (expected 1 to 4)")


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """Shortest side -> `size`, the long side scaled and truncated as torchvision's `Resize(size)` does."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def clip_preprocess(images: Tensor, size: int = 224,
                    mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD) -> Tensor:
    """IMAGE [B, H, W, C] in 0..1 -> normalised pixels [B, 3, size, size] (float32).

    Resize (shortest side = size, bicubic, antialiased), center crop size x size,
    then (x - mean) / std per channel.
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"expected an IMAGE batch [B, H, W, C] with B >= 1, got shape {tuple(images.shape)}")
    x = to_rgb(images.float()).clamp(0.0, 1.0).movedim(-1, 1)  # [B, 3, H, W]
    height, width = x.shape[-2:]
    new_h, new_w = resized_size(height, width, size)
    if (new_h, new_w) != (height, width):
        x = torch.nn.functional.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True,
                                            align_corners=False).clamp_(0.0, 1.0)  # as PIL on 8-bit
    top, left = round((new_h - size) / 2.0), round((new_w - size) / 2.0)
    x = x[..., top:top + size, left:left + size]
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return ((x - mean_t) / std_t).contiguous()
