"""The SD3.5 image prompt: SigLIP features, not tokens.

The adapter's projection depends on the timestep, so tokens cannot be made once
at encode time; the prompt keeps the penultimate SigLIP hidden states of the
reference images (cond) and of the negative (uncond; zeros by default, as in
diffusers' SD3 pipeline) and the patch projects them once per sampling step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..combine import CombineMode, apply_image_weights, combine_features
from ..errors import ImagePromptError
from ..spec import AdapterSpec
from .format import SIGLIP_FILE, SIGLIP_NAME, SD3AdapterShape, spec_of


@dataclass(frozen=True, eq=False)
class SD3ImagePrompt:
    """cond/uncond features [n, N, E]: n reference images, N SigLIP tokens (729), E the width (1152).

    The n images' tokens are laid side by side in one softmax (as for the UNet
    families' concat); uncond has the same shape.
    """

    cond: Tensor
    uncond: Tensor
    shape: SD3AdapterShape

    def __post_init__(self) -> None:
        if self.cond.ndim != 3 or self.cond.shape != self.uncond.shape:
            raise ImagePromptError(
                f"SD3.5 image prompt features must be [images, tokens, width] for cond and uncond alike; got "
                f"{tuple(self.cond.shape)} and {tuple(self.uncond.shape)}."
            )
        if self.cond.shape[-1] != self.shape.clip_dim:
            raise ImagePromptError(
                f"The SD3.5 adapter reads {self.shape.clip_dim}-wide {SIGLIP_NAME} hidden states, but the image "
                f"features are {self.cond.shape[-1]} wide. Load {SIGLIP_FILE} with Load CLIP Vision."
            )
        for name, tensor in (("cond", self.cond), ("uncond", self.uncond)):
            if not torch.isfinite(tensor).all():
                raise ImagePromptError(f"The SD3.5 image prompt's {name} features contain NaN or infinity; "
                                       "encode the reference image again.")

    @property
    def spec(self) -> AdapterSpec:
        """The adapter these features are for, comparable with any adapter's `spec` (as for UNet prompts)."""
        return spec_of(self.shape)

    @property
    def images(self) -> int:
        return self.cond.shape[0]

    def __deepcopy__(self, memo: dict) -> SD3ImagePrompt:
        return self  # immutable


def sd3_prompt_from_features(shape: SD3AdapterShape, cond: Tensor, uncond: Tensor | None, mode: CombineMode,
                             weights: tuple[float, ...] | None) -> SD3ImagePrompt:
    """SigLIP features of the references (and of a negative) -> the SD3.5 image prompt.

    Weights and combine modes act on the features, as for the UNet families.
    uncond: None for zeros (diffusers' SD3 pipeline: `zeros_like(image_embeds)`), or a
    negative's features (1, or one per reference image; averaged when the images are combined).
    """
    cond = combine_features(apply_image_weights(cond.float(), weights), mode)
    if uncond is None:
        uncond = torch.zeros_like(cond)
    elif uncond.shape[0] != cond.shape[0]:
        uncond = uncond.float().mean(dim=0, keepdim=True) if cond.shape[0] == 1 else uncond.float()
        uncond = uncond.expand(cond.shape[0], *uncond.shape[1:])
    return SD3ImagePrompt(cond=cond.cpu().contiguous(), uncond=uncond.float().cpu().contiguous(), shape=shape)
