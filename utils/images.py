"""IMAGE tensor helpers. ComfyUI images are float [B, H, W, C] in 0..1."""

from __future__ import annotations

from torch import Tensor

#: How a non-square reference image becomes the encoder's square input.
FIT_MODES = ("center crop", "pad", "stretch")


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



def check_image_batch(image: Tensor | None, node: str, what: str) -> Tensor:
    """Refuse an empty or odd IMAGE input with a message naming the node and input."""
    if image is None or image.ndim != 4 or image.shape[0] == 0:
        raise ValueError(f"{node}: '{what}' is an empty image batch; connect at least one image.")
    if image.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"{node}: '{what}' has {image.shape[-1]} channels; expected RGB(A) or gray.")
    return image
