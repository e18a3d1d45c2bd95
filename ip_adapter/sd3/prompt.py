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

from ..errors import ImagePromptError
from .format import SIGLIP_FILE, SIGLIP_NAME, SD3AdapterShape


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
    def images(self) -> int:
        return self.cond.shape[0]

    def __deepcopy__(self, memo: dict) -> SD3ImagePrompt:
        return self  # immutable
