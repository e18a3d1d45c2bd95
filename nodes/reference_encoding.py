"""Encode Image Prompt's pipeline for many or non-square references: fit, tiles, chunks, one row per latent.

Why a separate module: long batches (hundreds of animation frames) must not hold
every image's CLIP features at once (a plus adapter's are 257 x 1280 floats per
image, 0.5 GB for 400), and tiled references multiply the images by their tile
count. Here the references are encoded and projected `chunk` images at a time and
only the projected tokens are kept, so peak memory is the chunk's plus the tokens.

With one chunk and no tiles the result is the node's original path, bit for bit.
The reducing combine modes (add, average, ...) combine the features of all images
before the projection; they encode in chunks but keep the (one row per image)
features until the combination.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..ip_adapter.combine import CombineMode, image_prompt_from_features, parse_image_weights
from ..ip_adapter.errors import ImagePromptError
from ..ip_adapter.prompt import ImagePrompt, concat_images
from ..utils.images import check_image_batch, pad_to_square, to_rgb
from ..utils.tiling import crop_square, square_tiles
from . import comfy_bridge
from .prompt_assembly import check_feature_width, check_negative_count, project_prompt, unconditional_features
from .types import LoadedAdapter

NODE = "EncodeImagePrompt"
TILED = "tiled"
#: Images per encoder call when the node's input is left alone.
DEFAULT_CHUNK = 16


def prepared(image: Tensor, fit: str, crop_position: str, what: str) -> tuple[Tensor, int]:
    """Validate an IMAGE; RGB; fitted to the encoder's square. Returns (rows to encode, tiles per image)."""
    check_image_batch(image, NODE, what)
    image = to_rgb(image.float())
    if fit == "pad":
        return pad_to_square(image), 1
    if fit == TILED:
        return square_tiles(image)
    if fit == "center crop" and crop_position != "center":
        return crop_square(image, crop_position), 1
    return image, 1


def features(adapter: LoadedAdapter, clip_vision: object, rows: Tensor, fit: str, chunk: int) -> Tensor:
    """CLIP features of `rows`, encoded `chunk` rows at a time (one call when they fit)."""
    crop = fit != "stretch"
    parts = [comfy_bridge.encode(clip_vision, rows[i:i + chunk], adapter.spec.feature, crop=crop)
             for i in range(0, rows.shape[0], chunk)]
    out = parts[0] if len(parts) == 1 else torch.cat(parts)
    check_feature_width(adapter, out, NODE, "clip_vision")
    return out


def encode_references(adapter: LoadedAdapter, clip_vision: object, image: Tensor, fit: str, crop_position: str,
                      negative_image: Tensor | None, combine_embeds: str, image_weights: str,
                      chunk: int = DEFAULT_CHUNK) -> ImagePrompt:
    """The node's image prompt; see the module docstring for the memory bound."""
    if chunk < 1:
        raise ImagePromptError(f"{NODE} encode_chunk: {chunk}; give at least 1 image per encoder call.")
    mode = CombineMode(combine_embeds)
    rows, tiles = prepared(image, fit, crop_position, "image")
    images = rows.shape[0] // tiles
    weights = parse_image_weights(image_weights, images, f"{NODE} 'image_weights'")
    if tiles > 1 and mode.reduces:
        raise ImagePromptError(
            f"{NODE}: fit 'tiled' puts each image's tile tokens side by side; it works with combine_embeds "
            f"'concat' or 'one per latent', not '{combine_embeds}'. Use fit 'pad' to combine non-square images.")
    negative_rows = None
    if negative_image is not None:
        negative_rows, negative_tiles = prepared(negative_image, fit, crop_position, "negative_image")
        check_negative_count(negative_rows.shape[0] // negative_tiles, images, NODE, "negative_image", "image")
        if negative_tiles != tiles:
            raise ImagePromptError(
                f"{NODE}: with fit 'tiled', 'negative_image' makes {negative_tiles} tiles but 'image' makes {tiles}; "
                "give a negative image with the same aspect ratio.")
    if mode.reduces:  # the features of every image are combined before the projection
        cond = features(adapter, clip_vision, rows, fit, chunk)
        negative = None if negative_rows is None else features(adapter, clip_vision, negative_rows, fit, chunk)
        uncond = unconditional_features(adapter, negative, clip_vision, rows.shape[0], NODE, ("negative_image", "image"))
        return project_prompt(adapter, cond, uncond, combine_embeds, weights)
    return chunked(adapter, clip_vision, rows, negative_rows, tiles, fit, mode, weights, chunk)


def chunked(adapter: LoadedAdapter, clip_vision: object, rows: Tensor, negative_rows: Tensor | None, tiles: int,
            fit: str, mode: CombineMode, weights: tuple[float, ...] | None, chunk: int) -> ImagePrompt:
    """Encode and project about `chunk` rows at a time (whole images: tiles stay together); keep only tokens.

    One chunk and one tile is the original path: one projection of all rows, tokens side by side.
    """
    step = max(1, chunk // tiles) * tiles
    per_image_negative = negative_rows is not None and negative_rows.shape[0] == rows.shape[0] > tiles
    shared = None
    if not per_image_negative:  # zeros (None), the zero-pixel encoding, or one negative image (its tiles)
        negative = None if negative_rows is None else features(adapter, clip_vision, negative_rows, fit, chunk)
        shared = unconditional_features(adapter, negative, clip_vision, 1 if negative is None else negative.shape[0],
                                        NODE, ("negative_image", "image"))
    comfy_bridge.load_for_projection(adapter.patcher)
    conds, unconds = [], []
    for start in range(0, rows.shape[0], step):
        cond = features(adapter, clip_vision, rows[start:start + step], fit, chunk)
        if per_image_negative:
            assert negative_rows is not None
            uncond = features(adapter, clip_vision, negative_rows[start:start + step], fit, chunk)
        elif shared is not None and shared.shape[0] == tiles > 1:  # one negative's tiles, for every image
            uncond = shared.repeat(cond.shape[0] // tiles, *([1] * (shared.ndim - 1)))
        else:
            uncond = shared
        part_weights = None if weights is None else tuple(weights[(start + i) // tiles] for i in range(cond.shape[0]))
        part = image_prompt_from_features(adapter.model, cond, uncond, CombineMode.PER_LATENT, part_weights)
        conds.append(part.cond)
        unconds.append(part.uncond)
    cond_tokens = conds[0] if len(conds) == 1 else torch.cat(conds)
    uncond_tokens = unconds[0] if len(unconds) == 1 else torch.cat(unconds)
    return grouped(cond_tokens, uncond_tokens, tiles, mode, adapter)


def grouped(cond: Tensor, uncond: Tensor, tiles: int, mode: CombineMode, adapter: LoadedAdapter) -> ImagePrompt:
    """Per-row tokens [images * tiles, T, C] -> one row per image [images, tiles * T, C] (one per latent),
    or every token side by side [1, images * tiles * T, C] (concat)."""
    width = cond.shape[-1]
    images = cond.shape[0] // tiles
    cond, uncond = cond.reshape(images, -1, width), uncond.reshape(images, -1, width)
    if mode is CombineMode.CONCAT:
        cond, uncond = concat_images(cond), concat_images(uncond)
    return ImagePrompt(cond=cond, uncond=uncond, spec=adapter.spec)


def sd3_rows(image: Tensor, negative_image: Tensor | None, fit: str,
             crop_position: str) -> tuple[Tensor, Tensor | None]:
    """The fitted images for SD3.5's encode (its tokens depend on the timestep, so they are made per step).

    Tiles need the per-image token layout of the UNet/Flux prompt, which SD3.5's prompt does not have
    yet: refused by name rather than silently concatenated ('one per latent' is refused by sd3_nodes).
    """
    rows, tiles = prepared(image, fit, crop_position, "image")
    if tiles > 1:
        raise ImagePromptError(f"{NODE}: fit 'tiled' is not available for SD3.5 adapters yet; use 'pad' to keep "
                               "the whole image, or 'center crop' with crop_position.")
    negative = None if negative_image is None else prepared(negative_image, fit, crop_position, "negative_image")[0]
    return rows, negative
