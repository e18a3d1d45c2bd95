"""Several reference images -> one image prompt: per-image weights and combine modes.

The combination happens on the CLIP features (`image_embeds` [n, D] or penultimate
hidden states [n, 257, D]) *before* the adapter's projection, as in
ComfyUI_IPAdapter_plus (`combine_embeds`), so saved graphs keep their look when
they move to this pack. The projection is non-linear for plus adapters, so
combining tokens after it would give a different prompt.

Definitions (x_i: the features of image i, after its weight; n >= 2):

* concat:       no combination; each image is projected and the tokens lie side by side
                (one softmax over all of them, as diffusers does with several images).
* one per latent: no combination; image i's tokens are row i of the prompt and condition
                latent i alone (frames of an animation, seeds of a batch; see `per_latent`).
* add:          sum_i x_i
* subtract:     x_0 - mean_{i>=1} x_i  (the first image minus the average of the others)
* average:      mean_i x_i
* norm average: mean_i x_i / ||x||_i, where ||x|| is the L2 norm *across the images*,
                taken per feature element (`norm(dim=0)`): every element of the
                result is the mean of the images' values divided by their joint norm,
                so an image whose features are large does not dominate.

With one image every mode returns it unchanged. Weights multiply each image's
features before combining (what the incumbent's encoder `weight` does).
"""

from __future__ import annotations

from enum import Enum

import torch
from torch import Tensor

from .errors import ImagePromptError
from .model import IPAdapterModel
from .number_list import parse_numbers
from .prompt import ImagePrompt, concat_images


class CombineMode(str, Enum):
    """How the images of one batch become one prompt (values are the names users know)."""

    CONCAT = "concat"
    ADD = "add"
    SUBTRACT = "subtract"
    AVERAGE = "average"
    NORM_AVERAGE = "norm average"
    PER_LATENT = "one per latent"

    @property
    def reduces(self) -> bool:
        """True when n images become one row of features (every mode but concat and one per latent)."""
        return self not in (CombineMode.CONCAT, CombineMode.PER_LATENT)


COMBINE_MODES: tuple[str, ...] = tuple(mode.value for mode in CombineMode)



def parse_image_weights(text: str, count: int, where: str) -> tuple[float, ...] | None:
    """'1, 0.5' -> (1.0, 0.5) for `count` images; empty text -> None (every image at weight 1).

    `where` names the node and input for the message ("EncodeImagePrompt 'image_weights'").
    Commas, semicolons or white space separate the numbers; there must be exactly one
    finite number per image.
    """
    weights = parse_numbers(text, where, "Write one number per reference image, separated by commas, e.g. "
                                         "'1.0, 0.5'; leave it empty for weight 1 everywhere.")
    if weights is None:
        return None
    if len(weights) != count:
        raise ImagePromptError(
            f"{where}: {len(weights)} weight(s) given for {count} reference image(s); give exactly one per "
            f"image (in batch order), or leave it empty."
        )
    return tuple(weights)


def apply_image_weights(features: Tensor, weights: tuple[float, ...] | None) -> Tensor:
    """x_i -> w_i x_i for features [n, ...]; `None` returns `features` itself (bit-identical)."""
    if weights is None:
        return features
    scale = torch.tensor(weights, dtype=features.dtype, device=features.device)
    return features * scale.reshape(-1, *([1] * (features.ndim - 1)))


def combine_features(features: Tensor, mode: CombineMode) -> Tensor:
    """Combine the images of `features` [n, ...] -> [1, ...] (or unchanged for concat / n = 1)."""
    if not mode.reduces or features.shape[0] == 1:
        return features
    if mode is CombineMode.ADD:
        combined = features.sum(dim=0)
    elif mode is CombineMode.SUBTRACT:
        combined = features[0] - features[1:].mean(dim=0)
    elif mode is CombineMode.AVERAGE:
        combined = features.mean(dim=0)
    else:  # NORM_AVERAGE: the norm runs across the images, per element
        norm = torch.linalg.vector_norm(features, dim=0, keepdim=True)
        # An element that is 0 in every image stays 0 (instead of 0/0 = NaN).
        combined = torch.where(norm > 0, features / norm, torch.zeros_like(features)).mean(dim=0)
    return combined.unsqueeze(0)


def image_prompt_from_features(adapter: IPAdapterModel, cond: Tensor, uncond: Tensor | None, mode: CombineMode,
                               weights: tuple[float, ...] | None) -> ImagePrompt:
    """CLIP features of the references (and of the negative) -> the adapter's image prompt.

    cond: [n, ...] features of `adapter.spec.feature`. uncond: [1 or n, ...] (a shared
    unconditional encoding or one negative per image), or None for zeros (the authors'
    uncond for `image_embeds`). Concat keeps one uncond row per image, side by side like
    the cond tokens; the reducing modes keep one row, averaging several negatives
    (the incumbent kept only the first).
    """
    cond = combine_features(apply_image_weights(cond, weights), mode)
    if uncond is None:
        uncond = cond.new_zeros(1, *cond.shape[1:]).expand(cond.shape)
    elif uncond.shape[0] != cond.shape[0]:
        uncond = uncond.mean(dim=0, keepdim=True) if cond.shape[0] == 1 else uncond
        uncond = uncond.expand(cond.shape[0], *uncond.shape[1:])
    join = (lambda tokens: tokens) if mode is CombineMode.PER_LATENT else concat_images
    return ImagePrompt(
        cond=join(adapter.project(cond)).cpu(),
        uncond=join(_project_rows(adapter, uncond)).cpu(),
        spec=adapter.spec,
    )


def _project_rows(adapter: IPAdapterModel, features: Tensor) -> Tensor:
    """`adapter.project(features)`, projecting a row repeated by `expand` (batch stride 0) only once.

    The shared unconditional features of n reference images are one row expanded to n:
    projecting it n times (a Resampler pass each) would cost n-1 passes for nothing.
    """
    if features.shape[0] > 1 and features.stride(0) == 0:
        one = adapter.project(features[:1])
        return one.expand(features.shape[0], *one.shape[1:])
    return adapter.project(features)
