"""Every call into ComfyUI internals lives here, so the nodes stay declarative.

ComfyUI-facing, not math: building the adapter's ModelPatcher, running the CLIP
vision tower, listing the UNet's cross-attention slots, registering patches on
a clone through `ModelPatcher.set_model_attn2_replace`.
"""

from __future__ import annotations

from typing import Any

import comfy.ldm.modules.attention as comfy_attention
import comfy.model_management
import comfy.model_patcher
import torch
from torch import Tensor

from ..ip_adapter import layout
from ..ip_adapter.errors import ImagePromptError
from ..ip_adapter.model import IPAdapterModel
from ..ip_adapter.patch import ImageBranch, slot_patches
from ..ip_adapter.spec import AdapterSpec, EncoderFeature
from ..utils.images import shrink_for_encoder


def adapter_patcher(model: IPAdapterModel) -> comfy.model_patcher.ModelPatcher:
    """Wrap the adapter so ComfyUI loads it to the GPU and offloads it with the UNet."""
    return comfy.model_patcher.ModelPatcher(
        model,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )


def encode(clip_vision: Any, image: Tensor, feature: EncoderFeature, crop: bool) -> Tensor:
    """Run ComfyUI's CLIP vision tower on IMAGE [B, H, W, 3]; return the feature the adapter reads.

    Very large images are brought down to the tower's input size here, before
    ComfyUI copies them to the GPU (`shrink_for_encoder`).
    """
    image = shrink_for_encoder(image, getattr(clip_vision, "image_size", 224), crop)
    output = clip_vision.encode_image(image, crop=crop)
    return output[feature.value].float()


def output_feature(output: Any, feature: EncoderFeature, where: str) -> Tensor:
    """The adapter's feature from a CLIP_VISION_OUTPUT (what ComfyUI's CLIPVisionEncode returns)."""
    value = getattr(output, feature.value, None)
    if not isinstance(value, Tensor):
        raise ImagePromptError(
            f"{where} has no '{feature.value}' tensor; connect the output of ComfyUI's CLIP Vision Encode."
        )
    return value.to(comfy.model_management.intermediate_device()).float()


def encode_zero_pixels(clip_vision: Any, feature: EncoderFeature, count: int) -> Tensor:
    """The encoding of an all-zero *normalised* pixel tensor (the authors' uncond for plus/full-face).

    A black image normalises to non-zero values, so it cannot stand in for this;
    the tower is called on zeros directly, past ComfyUI's preprocessing.
    """
    comfy.model_management.load_model_gpu(clip_vision.patcher)
    size = getattr(clip_vision, "image_size", 224)
    pixels = torch.zeros(1, 3, size, size, device=clip_vision.load_device)
    out = clip_vision.model(pixel_values=pixels, intermediate_output=-2)
    picked = out[2] if feature is EncoderFeature.IMAGE_EMBEDS else out[1]
    picked = picked.to(comfy.model_management.intermediate_device()).float()
    return picked.expand(count, *picked.shape[1:])


def zero_pixel_key(clip_vision: Any, feature: EncoderFeature) -> tuple:
    """What `encode_zero_pixels` depends on besides the model object: feature, input size, weight patches."""
    patcher = getattr(clip_vision, "patcher", None)
    return feature, getattr(clip_vision, "image_size", 224), getattr(patcher, "patches_uuid", None)


def load_for_projection(patcher: comfy.model_patcher.ModelPatcher) -> None:
    comfy.model_management.load_model_gpu(patcher)


def unet_slots(model: comfy.model_patcher.ModelPatcher) -> dict[layout.Slot, int]:
    """Every cross-attention slot the UNet really has, with its attention width."""
    unet = model.get_model_object("diffusion_model")
    found: dict[layout.Slot, int] = {}
    groups = (("input", getattr(unet, "input_blocks", [])),
              ("middle", [getattr(unet, "middle_block", [])]),
              ("output", getattr(unet, "output_blocks", [])))
    for block, sequence in groups:
        for number, stage in enumerate(sequence):
            for module in stage:
                for index, transformer in enumerate(getattr(module, "transformer_blocks", [])):
                    attn2 = getattr(transformer, "attn2", None)
                    if attn2 is not None:
                        found[layout.Slot(block, number, index)] = attn2.to_q.weight.shape[0]
    return found


def check_model_fits(model: comfy.model_patcher.ModelPatcher, spec: AdapterSpec, adapter_name: str) -> None:
    """Refuse an adapter whose layers do not match the UNet (SD1.5 vs SDXL, or another architecture)."""
    available = unet_slots(model)
    wanted = layout.slot_for_layer(spec.base)
    if len(available) != len(wanted) or any(slot not in available for slot in wanted.values()):
        looks_like = {16: "SD1.5", 70: "SDXL"}.get(len(available), "another architecture")
        raise ImagePromptError(
            f"ApplyIPAdapter: '{adapter_name}' is a {spec.base.value} adapter ({len(wanted)} cross-attention "
            f"layers at the {spec.base.value} positions), but the model has {len(available)} cross-attention "
            f"layers (looks like {looks_like}). Load a {spec.base.value} checkpoint, or pick an adapter made "
            "for this model."
        )
    for (index, slot), width in zip(wanted.items(), spec.layer_widths):
        if available[slot] != width:
            raise ImagePromptError(
                f"ApplyIPAdapter: '{adapter_name}' layer {index} is {width} wide but the model's "
                f"{tuple(slot)} attention is {available[slot]} wide; this adapter is for another model."
            )


def sigma_window(model: comfy.model_patcher.ModelPatcher, start: float, end: float) -> tuple[float, float] | None:
    """Convert schedule fractions to (sigma_start, sigma_end) as ControlNetApplyAdvanced does."""
    for name, value in (("start_percent", start), ("end_percent", end)):
        if not 0.0 <= value <= 1.0:  # also catches NaN, which ComfyUI's min/max validation lets through
            raise ImagePromptError(f"ApplyIPAdapter: {name} is {value}; give a number between 0 and 1.")
    if start <= 0.0 and end >= 1.0:
        return None
    sampling = model.get_model_object("model_sampling")
    return float(sampling.percent_to_sigma(start)), float(sampling.percent_to_sigma(end))


def patched_clone(model: comfy.model_patcher.ModelPatcher, branch: ImageBranch, spec: AdapterSpec) -> Any:
    """Clone `model` and register one attn2 replace per slot, composing with what is there."""
    clone = model.clone()
    current = clone.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})

    def existing(slot: layout.Slot) -> Any:
        for key in layout.comfy_keys(slot):
            if key in current:
                return current[key]
        return None

    patches = slot_patches(branch, layout.slot_for_layer(spec.base), existing, attention_backend(),
                           image_attention_backend())
    for slot, patch in patches:
        clone.set_model_attn2_replace(patch, slot.block, slot.number, slot.transformer_index)
    return clone


def attention_backend() -> Any:
    """ComfyUI's selected attention (pytorch, xformers, flash, sage ...), so user flags apply."""
    return comfy_attention.optimized_attention


def image_attention_backend() -> Any:
    """The attention for the image term, which has only 4 (base) or 16 (plus) keys.

    ComfyUI's fused backends (PyTorch SDPA, xformers, flash, sage) are used as the
    user selected them. Its pure-PyTorch fallbacks (sub-quadratic, split, basic;
    sub-quadratic is the default on the CPU) exist to bound the memory of long key
    sequences; 4-16 keys need no bounding, and there ComfyUI's registered "pytorch"
    function (fused SDPA on strided views, no copies of q) costs about a third less
    (`benchmarks/README.md`). The text branch keeps the selected backend, and
    `optimized_attention_override` in the transformer options still applies: every
    one of these goes through ComfyUI's `wrap_attn`.
    """
    selected = comfy_attention.optimized_attention
    fallbacks = (comfy_attention.attention_sub_quad, comfy_attention.attention_split, comfy_attention.attention_basic)
    if any(selected is fallback for fallback in fallbacks):
        return comfy_attention.get_attention_function("pytorch", selected)
    return selected
