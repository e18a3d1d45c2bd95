"""The image prompt: projected image tokens for the conditional and unconditional rows.

It is what `EncodeImagePrompt` outputs and `ApplyIPAdapter` consumes. Tokens are
kept in float32 on the CPU (they are small: at most a few hundred x 2048), and
each K/V projection casts them to the UNet's device and dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import ImagePromptError
from .spec import AdapterSpec


@dataclass(frozen=True, eq=False)
class ImagePrompt:
    """cond/uncond tokens, each [n, T, C]; n = 1 (shared by the latent batch) or the latent batch size.

    `spec` is the adapter that projected them: only that adapter's K/V layers may
    consume them (tokens of another projection would be silently meaningless).
    """

    cond: Tensor
    uncond: Tensor
    spec: AdapterSpec

    def __post_init__(self) -> None:
        if self.cond.ndim != 3 or self.cond.shape != self.uncond.shape:
            raise ImagePromptError(
                f"Image prompt tokens must be [n, tokens, width] for cond and uncond alike; got "
                f"{tuple(self.cond.shape)} and {tuple(self.uncond.shape)}."
            )
        if self.cond.shape[-1] != self.spec.cross_attention_dim:
            raise ImagePromptError(
                f"Image prompt tokens are {self.cond.shape[-1]} wide; the adapter needs "
                f"{self.spec.cross_attention_dim}."
            )
        for name, tensor in (("cond", self.cond), ("uncond", self.uncond)):
            if not torch.isfinite(tensor).all():
                raise ImagePromptError(
                    f"The image prompt's {name} tokens contain NaN or infinity. Encode the reference image "
                    "again (Encode Image Prompt with finite pixels and weights); a saved image prompt with "
                    "such values is damaged."
                )

    @property
    def tokens(self) -> int:
        return self.cond.shape[1]

    def __deepcopy__(self, memo: dict) -> ImagePrompt:
        return self  # immutable


def concat_images(tokens: Tensor) -> Tensor:
    """Several reference images -> one token sequence: [n, T, C] -> [1, n*T, C].

    All images then share one softmax in every layer, as diffusers does with
    several images for one adapter.
    """
    return tokens.reshape(1, -1, tokens.shape[-1])
