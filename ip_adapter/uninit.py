"""Layers whose constructor does not initialise their parameters.

An adapter's parameters always come from its checkpoint, so default initialisation
is wasted work. Building on the meta device already avoids the memory and the
arithmetic, but `nn.Linear` and `nn.LayerNorm` still dispatch their init kernels
there: for an SDXL adapter's 210 modules that alone was about half of
LoadIPAdapter's time. These subclasses keep everything else (forward, repr, state
dict keys, `isinstance(m, nn.Linear)`); built off the meta device, their parameters
hold whatever `torch.empty` returned until a state dict is loaded.
"""

from __future__ import annotations

from torch import nn


class Linear(nn.Linear):
    """`nn.Linear` without the kaiming initialisation."""

    def reset_parameters(self) -> None:
        """Nothing to do: the checkpoint provides the weight (and bias)."""


class LayerNorm(nn.LayerNorm):
    """`nn.LayerNorm` without setting the weight to 1 and the bias to 0."""

    def reset_parameters(self) -> None:
        """Nothing to do: the checkpoint provides the weight and bias."""
