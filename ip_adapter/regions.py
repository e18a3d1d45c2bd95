"""Regional image prompts: several (image prompt, weight, mask) pairs that one Apply IP-Adapter patches in.

Why: "this reference on the left, that one on the right" took two Apply nodes,
two mask chains and two masked text conditionings per region. A region bundles
what one region needs; a chain of regions travels on the image-prompt socket, so
N regions are N region nodes and one Apply IP-Adapter, which adds one masked
image term per region (the same stacking as chained Apply nodes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from .errors import ImagePromptError
from .prompt import ImagePrompt
from .spec import AdapterSpec


@dataclass(frozen=True, eq=False)
class Region:
    """One region: its image prompt, its weight (a multiplier of Apply's weight) and its mask [1 or batch, H, W]."""

    prompt: ImagePrompt
    weight: float
    mask: Tensor


@dataclass(frozen=True, eq=False)
class RegionalPrompt:
    """The regions of a chain, in order, with the masked text conditioning they gathered (ComfyUI lists).

    `positive` / `negative` hold ComfyUI CONDITIONING items (opaque here: [tensor, dict] pairs).
    """

    regions: tuple[Region, ...]
    positive: tuple[Any, ...] = ()
    negative: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if not self.regions:
            raise ImagePromptError("A regional image prompt needs at least one region.")
        spec = self.regions[0].prompt.spec
        for index, region in enumerate(self.regions[1:], start=2):
            if region.prompt.spec != spec:
                raise ImagePromptError(
                    f"IPAdapterRegion: region {index}'s image prompt was encoded for a {region.prompt.spec.describe()} "
                    f"adapter, region 1's for {spec.describe()}; one Apply IP-Adapter needs one adapter. Encode every "
                    "region's reference with the same adapter (or apply the other adapter with a second chain).")

    @property
    def spec(self) -> AdapterSpec:
        """The adapter every region was encoded for (Apply IP-Adapter checks it like a single prompt's)."""
        return self.regions[0].prompt.spec

    def __deepcopy__(self, memo: dict) -> RegionalPrompt:
        return self  # immutable

    def then(self, region: Region, positive: tuple[Any, ...] = (), negative: tuple[Any, ...] = ()) -> RegionalPrompt:
        """This chain with one more region (and its masked text) appended."""
        return RegionalPrompt(self.regions + (region,), self.positive + positive, self.negative + negative)
