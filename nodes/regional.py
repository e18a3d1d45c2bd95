"""IPAdapterRegion: a mask, an image prompt with its weight, and optional text for that region, in one node.

Chained (each node's `regions` into the next one's `previous`), N regions are N
nodes: the last node's `regions` goes to Apply IP-Adapter's image_prompt (one
apply, one masked image term per region), its `positive` / `negative` are every
region's text masked as ComfyUI's Conditioning (Set Mask) does, ready for the
sampler (combined with a global prompt through Conditioning (Combine) if wanted).
"""

from __future__ import annotations

from typing import Any

import node_helpers
from comfy_api.latest import io
from torch import Tensor

from ..ip_adapter.errors import ImagePromptError
from ..ip_adapter.masking import check_mask
from ..ip_adapter.prompt import ImagePrompt
from ..ip_adapter.regions import Region, RegionalPrompt
from ..ip_adapter.sd3.prompt import SD3ImagePrompt
from .types import ImagePromptSocket

NODE = "IPAdapterRegion"


def masked(conditioning: list | None, mask: Tensor, strength: float) -> tuple[Any, ...]:
    """CONDITIONING confined to `mask`: the values Conditioning (Set Mask) sets, with its 'default' area."""
    if not conditioning:
        return ()
    return tuple(node_helpers.conditioning_set_values(
        conditioning, {"mask": mask, "set_area_to_bounds": False, "mask_strength": strength}))


def parts(image_prompt: ImagePrompt | RegionalPrompt,
          attn_mask: Tensor | None) -> list[tuple[ImagePrompt, float, Tensor | None, str]]:
    """(prompt, weight factor, mask, mask's input name) per image term Apply IP-Adapter adds: one, or one per region."""
    if not isinstance(image_prompt, RegionalPrompt):
        return [(image_prompt, 1.0, attn_mask, "ApplyIPAdapter attn_mask")]
    if attn_mask is not None:
        raise ImagePromptError("ApplyIPAdapter: 'attn_mask' is connected, but the image prompt is a chain of "
                               "IP-Adapter Region nodes, which carry their own masks; disconnect attn_mask.")
    return [(region.prompt, region.weight, region.mask, f"{NODE} mask (region {index})")
            for index, region in enumerate(image_prompt.regions, start=1) if region.weight != 0.0]


class IPAdapterRegion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE,
            display_name="IP-Adapter Region",
            category="ip_adapter",
            description="One region of a regional prompt: the image prompt acts inside the mask (at this weight), "
                        "and the optional positive/negative text is masked to it. Chain one node per region "
                        "(regions -> previous); connect the last node's regions to Apply IP-Adapter's image_prompt "
                        "and its positive/negative to the sampler.",
            inputs=[
                ImagePromptSocket.Input("image_prompt", tooltip="From Encode Image Prompt: this region's reference."),
                io.Mask.Input("mask", tooltip="Where this region is (1 inside; any size, resized per layer). One mask "
                                              "for all latents, or one per latent."),
                io.Float.Input("weight", default=1.0, min=-1.0, max=3.0, step=0.01,
                               tooltip="This region's image prompt strength (multiplies Apply IP-Adapter's weight)."),
                io.Conditioning.Input("positive", optional=True,
                                      tooltip="Optional text for this region; it is masked to the region."),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="Optional negative text for this region; masked to the region."),
                ImagePromptSocket.Input("previous", optional=True,
                                        tooltip="The 'regions' output of the previous IP-Adapter Region node."),
                io.Float.Input("text_strength", default=1.0, min=0.0, max=10.0, step=0.01, optional=True,
                               tooltip="Strength of the masked text (Conditioning (Set Mask)'s strength)."),
            ],
            outputs=[ImagePromptSocket.Output(display_name="regions"),
                     io.Conditioning.Output(display_name="positive"),
                     io.Conditioning.Output(display_name="negative")],
        )

    @classmethod
    def execute(cls, image_prompt: Any, mask: Tensor, weight: float, positive: list | None = None,
                negative: list | None = None, previous: Any = None, text_strength: float = 1.0) -> io.NodeOutput:
        if isinstance(image_prompt, SD3ImagePrompt):
            raise ImagePromptError(f"{NODE}: regions are not available for SD3.5 adapters yet; connect Encode Image "
                                   "Prompt to Apply IP-Adapter directly and give one region with its attn_mask.")
        if not isinstance(image_prompt, ImagePrompt):
            raise ImagePromptError(f"{NODE}: 'image_prompt' must come from Encode Image Prompt (one reference "
                                   f"prompt), got {type(image_prompt).__name__}; connect chains to 'previous'.")
        if previous is not None and not isinstance(previous, RegionalPrompt):
            raise ImagePromptError(f"{NODE}: 'previous' must be the 'regions' output of another IP-Adapter Region "
                                   "node, not an image prompt; connect the image prompt to 'image_prompt'.")
        mask = check_mask(mask, f"{NODE} mask").clamp(0.0, 1.0)
        region = Region(prompt=image_prompt, weight=float(weight), mask=mask)
        text = masked(positive, mask, text_strength), masked(negative, mask, text_strength)
        chain = previous.then(region, *text) if previous is not None else RegionalPrompt((region,), *text)
        return io.NodeOutput(chain, list(chain.positive), list(chain.negative))
