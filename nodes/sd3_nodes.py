"""What the shared nodes do when the adapter is an SD3.5 one (called from their `execute`).

The three nodes stay the same for every family; for SD3.5 the encode nodes keep
SigLIP features (the projection runs per step) and ApplyIPAdapter registers
joint-block patches instead of attn2 patches. Options that only mean something
for UNet cross-attention are refused by name, saying what to use instead.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from ..ip_adapter.attention import EmbedsScaling
from ..ip_adapter.combine import CombineMode, parse_image_weights
from ..ip_adapter.errors import ImagePromptError
from ..ip_adapter.masking import check_mask
from ..ip_adapter.number_list import parse_numbers
from ..ip_adapter.sd3.format import SIGLIP_FILE, SIGLIP_NAME
from ..ip_adapter.sd3.model import SD3Adapter
from ..ip_adapter.sd3.patch import SD3Branch
from ..ip_adapter.sd3.prompt import SD3ImagePrompt, sd3_prompt_from_features
from ..ip_adapter.spec import EncoderFeature
from ..ip_adapter.weighting import LINEAR
from . import comfy_bridge, sd3_bridge

APPLY = "ApplyIPAdapter"


def is_sd3(adapter: Any) -> bool:
    return isinstance(getattr(adapter, "model", None), SD3Adapter)


def check_siglip(adapter: Any, features: Tensor, node: str, source: str) -> Tensor:
    """Refuse features from another tower (CLIP-H, CLIP-L ...) than SigLIP-384, naming the file to load."""
    shape = adapter.model.shape
    if features.ndim != 3 or features.shape[-1] != shape.clip_dim:
        got = f"width {features.shape[-1]}" if features.ndim == 3 else f"shape {tuple(features.shape)}"
        raise ImagePromptError(
            f"{node}: '{adapter.name}' (SD3.5) needs the {SIGLIP_NAME} CLIP vision model (penultimate hidden "
            f"states, width {shape.clip_dim}), but '{source}' gives {got}. Load {SIGLIP_FILE} with Load CLIP Vision."
        )
    return features


def encode(adapter: Any, clip_vision: Any, image: Tensor, negative: Tensor | None, fit: str, combine_embeds: str,
           image_weights: str, node: str) -> SD3ImagePrompt:
    """EncodeImagePrompt for SD3.5: SigLIP penultimate hidden states of the images (and negative)."""
    crop = fit != "stretch"
    feature = EncoderFeature.PENULTIMATE
    cond = check_siglip(adapter, comfy_bridge.encode(clip_vision, image, feature, crop), node, "clip_vision")
    uncond = None
    if negative is not None:
        uncond = check_siglip(adapter, comfy_bridge.encode(clip_vision, negative, feature, crop), node, "clip_vision")
    return from_features(adapter, cond, uncond, combine_embeds, image_weights, node, "negative_image", "image")


def from_features(adapter: Any, cond: Tensor, uncond: Tensor | None, combine_embeds: str, image_weights: str,
                  node: str, negative_input: str, image_input: str) -> SD3ImagePrompt:
    if uncond is not None and uncond.shape[0] not in (1, cond.shape[0]):
        raise ImagePromptError(f"{node}: '{negative_input}' has {uncond.shape[0]} images; give 1 or as many as "
                               f"'{image_input}' ({cond.shape[0]}).")
    mode = CombineMode(combine_embeds)
    if mode is CombineMode.PER_LATENT:  # SD3.5's prompt has no per-latent rows yet: refuse, never concatenate
        raise ImagePromptError(f"{node}: combine_embeds '{mode.value}' is not available for SD3.5 adapters yet; "
                               "use 'concat' or a combine mode.")
    weights = parse_image_weights(image_weights, cond.shape[0], f"{node} 'image_weights'")
    return sd3_prompt_from_features(adapter.model.shape, cond, uncond, mode, weights)


def from_clip_vision_output(adapter: Any, output: Any, negative: Any, combine_embeds: str, image_weights: str,
                            node: str) -> SD3ImagePrompt:
    """ImagePromptFromCLIPVision for SD3.5 (no zero-pixel encoding needed: the uncond is zeros)."""
    feature = EncoderFeature.PENULTIMATE
    cond = check_siglip(adapter, comfy_bridge.output_feature(output, feature, f"{node}: 'clip_vision_output'"),
                        node, "clip_vision_output")
    uncond = None if negative is None else check_siglip(
        adapter, comfy_bridge.output_feature(negative, feature, f"{node}: 'negative'"), node, "negative")
    return from_features(adapter, cond, uncond, combine_embeds, image_weights, node, "negative", "clip_vision_output")


def block_weights(text: str, blocks: int) -> dict[int, float]:
    """layer_weights for SD3.5: one multiplier per joint block (0 skips it); empty = all 1."""
    where = f"{APPLY} layer_weights"
    values = parse_numbers(text, where, f"Give {blocks} numbers, one per joint block, e.g. '1, 1, 0.5, ...'.")
    if values is None:
        return {}
    if len(values) != blocks:
        raise ImagePromptError(f"{where}: got {len(values)} numbers, but this SD3.5 adapter acts in {blocks} joint "
                               f"blocks; give exactly {blocks} (block 0 first), or leave it empty.")
    return dict(enumerate(values))


def apply(model: Any, adapter: Any, prompt: Any, weight: float, start: float, end: float, weight_type: str,
          embeds_scaling: str, attn_mask: Tensor | None, layer_weights: str) -> Any:
    """ApplyIPAdapter for SD3.5: a clone with one joint-block patch per active block."""
    shape = adapter.model.shape
    if not isinstance(prompt, SD3ImagePrompt) or prompt.shape != shape:
        what = prompt.spec.describe()
        raise ImagePromptError(f"{APPLY}: the image prompt was encoded for a {what} adapter, but '{adapter.name}' is "
                               f"{shape.describe()}. Encode with the same adapter.")
    if weight_type != LINEAR:
        raise ImagePromptError(
            f"{APPLY}: weight_type '{weight_type}' picks SD1.5/SDXL UNet blocks; SD3.5 has {shape.blocks} joint "
            f"blocks and no such blocks. Use 'linear', and layer_weights ({shape.blocks} numbers) to weight blocks."
        )
    if embeds_scaling != EmbedsScaling.V_ONLY.value:
        raise ImagePromptError(f"{APPLY}: embeds_scaling '{embeds_scaling}' is for UNet adapters; the SD3.5 adapter "
                               "weights its attention output ('V only').")
    if not math.isfinite(weight):
        raise ImagePromptError(f"{APPLY}: weight is {weight}; give a number between -1 and 3.")
    if start > end:
        raise ImagePromptError(f"{APPLY}: start_percent ({start}) is after end_percent ({end}); set start <= end.")
    blocks = sd3_bridge.check_model_fits(model, shape, adapter.name, APPLY)  # names the model's kind
    comfy_bridge.check_model_fits(model, adapter.spec, adapter.name, APPLY)  # the family seam's point check
    multipliers = block_weights(layer_weights, shape.blocks)
    mask = check_mask(attn_mask) if attn_mask is not None else None
    window = comfy_bridge.sigma_window(model, start, end, APPLY)
    if weight == 0.0 or all(multipliers.get(i, 1.0) == 0.0 for i in range(shape.blocks)):
        return model.clone()
    ratios, normed = sd3_bridge.block_ratios(blocks, adapter.model, APPLY)
    branch = SD3Branch(adapter=adapter.model, prompt=prompt, weight=float(weight), ratios=ratios, host_normed=normed,
                       multiplier=sd3_bridge.timestep_multiplier(model), window=window, block_weights=multipliers,
                       models=(adapter.patcher,), mask=mask)
    return comfy_bridge.patched_clone(model, branch)
