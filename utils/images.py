"""IMAGE tensor helpers. ComfyUI images are float [B, H, W, C] in 0..1."""

from __future__ import annotations

import torch
from torch import Tensor

#: How a non-square reference image becomes the encoder's square input.
FIT_MODES = ("center crop", "pad", "stretch", "tiled")

#: Images with a side longer than this are resized on the CPU before they reach the encoder
#: (see `shrink_for_encoder`); smaller ones are passed on untouched.
LARGE_SIDE = 2048


def to_rgb(image: Tensor) -> Tensor:
    """Drop alpha, expand grayscale: [B, H, W, C] with C in 1..4 -> [B, H, W, 3]."""
    channels = image.shape[-1]
    if channels == 3:
        return image
    if channels == 4:
        return image[..., :3]
    if channels == 1:
        return image.expand(*image.shape[:-1], 3)
    if channels == 2:  # gray + alpha
        return image[..., :1].expand(*image.shape[:-1], 3)
    raise ValueError(f"an IMAGE with {channels} channels (expected 1 to 4)")


def pad_to_square(image: Tensor, value: float = 0.0) -> Tensor:
    """Pad [B, H, W, C] evenly on the short side so the whole picture survives encoding."""
    _, height, width, _ = image.shape
    side = max(height, width)
    if height == width:
        return image
    top, left = (side - height) // 2, (side - width) // 2
    out = image.new_full((image.shape[0], side, side, image.shape[3]), value)
    out[:, top:top + height, left:left + width] = image
    return out


def shrink_for_encoder(image: Tensor, size: int, crop: bool, large_side: int = LARGE_SIDE) -> Tensor:
    """Resize a very large [B, H, W, C] image to the encoder's `size` x `size` input, on its own device.

    Why: ComfyUI's CLIP preprocessing first copies the full-resolution image to the
    encoder's device (a GPU), then resizes it there; an 8000 x 8000 batch costs
    0.7 GB of GPU memory per image for a 224 x 224 result. This does the same
    resize earlier, where the image already is (the CPU): shortest side to `size`
    and center crop (`crop`), or straight to `size` x `size`, bicubic with
    antialiasing, which is what that preprocessing does, so it then finds the
    image at its input size and leaves it alone. Images whose sides are all at
    most `large_side` are returned as they are (same object), so results for
    normal-size images cannot change.
    """
    _, height, width, _ = image.shape
    if max(height, width) <= large_side:
        return image
    if crop:
        scale = size / min(height, width)
        target = (round(height * scale), round(width * scale))
    else:
        target = (size, size)
    pixels = torch.nn.functional.interpolate(image.movedim(-1, 1), size=target, mode="bicubic", antialias=True)
    top, left = (target[0] - size) // 2, (target[1] - size) // 2
    return pixels[:, :, top:top + size, left:left + size].movedim(1, -1)


def check_image_batch(image: Tensor | None, node: str, what: str) -> Tensor:
    """Refuse an empty or odd IMAGE input with a message naming the node and input."""
    if image is None or image.ndim != 4 or image.shape[0] == 0:
        raise ValueError(f"{node}: '{what}' is an empty image batch; connect at least one image.")
    if image.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"{node}: '{what}' has {image.shape[-1]} channels; expected RGB(A) or gray.")
    if not torch.isfinite(torch.stack([image.amax(), image.amin()])).all():  # NaN propagates; no big temporary
        raise ValueError(f"{node}: '{what}' has NaN or infinite pixel values; fix or replace the node that "
                         "produced the image (pixels must be numbers in 0..1).")
    return image
