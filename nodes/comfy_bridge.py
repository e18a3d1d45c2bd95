"""Every call into ComfyUI internals lives here, so the nodes stay declarative.

ComfyUI-facing, not math: building the adapter's (and the CLIP scorer's)
ModelPatcher, devices and dtypes, running the CLIP vision tower, listing the
points a model offers (UNet cross-attention slots, DiT blocks), and registering
the family's patches on a clone through ModelPatcher's public setters
(`set_model_attn2_replace`, `set_model_patch_replace(..., "dit", ...)`).
"""

from __future__ import annotations

from typing import Any

import comfy.ldm.modules.attention as comfy_attention
import comfy.model_management
import comfy.model_patcher
import torch
from torch import Tensor

from ..ip_adapter import families
from ..ip_adapter.errors import ImagePromptError
from ..ip_adapter.families import Backends, HookPoint
from ..ip_adapter.patch import ImageBranch
from ..ip_adapter.spec import AdapterSpec, EncoderFeature
from ..utils.images import shrink_for_encoder


def adapter_patcher(model: torch.nn.Module) -> comfy.model_patcher.ModelPatcher:
    """Wrap the adapter so ComfyUI loads it to the GPU and offloads it with the diffusion model."""
    return comfy.model_patcher.ModelPatcher(
        model,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )


def text_encoder_patcher(model: torch.nn.Module) -> comfy.model_patcher.ModelPatcher:
    """Wrap a CLIP scorer so ComfyUI manages it like a text encoder (its device and offload device)."""
    return comfy.model_patcher.ModelPatcher(
        model,
        load_device=comfy.model_management.text_encoder_device(),
        offload_device=comfy.model_management.text_encoder_offload_device(),
    )


def text_encoder_half_dtype() -> torch.dtype:
    """fp16 where ComfyUI would run fp16 on the text-encoder device, else fp32 (the CPU)."""
    device = comfy.model_management.text_encoder_device()
    return torch.float16 if comfy.model_management.should_use_fp16(device) else torch.float32


def load_to_device(patcher: comfy.model_patcher.ModelPatcher) -> None:
    """Let ComfyUI load `patcher` to its device (freeing others as it sees fit)."""
    comfy.model_management.load_model_gpu(patcher)


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


def black_image(size: int = 224) -> Tensor:
    """An all-black IMAGE [1, size, size, 3] (the XLabs/diffusers Flux pipelines' default negative image)."""
    return torch.zeros(1, size, size, 3, device=comfy.model_management.intermediate_device())


def zero_pixel_key(clip_vision: Any, feature: EncoderFeature) -> tuple:
    """What `encode_zero_pixels` depends on besides the model object: feature, input size, weight patches."""
    patcher = getattr(clip_vision, "patcher", None)
    return feature, getattr(clip_vision, "image_size", 224), getattr(patcher, "patches_uuid", None)


def load_for_projection(patcher: comfy.model_patcher.ModelPatcher) -> None:
    load_to_device(patcher)


def model_points(model: comfy.model_patcher.ModelPatcher) -> dict[HookPoint, int]:
    """Every point the diffusion model offers a patch (any family), with its attention width.

    UNet: each `attn2` of a transformer block, keyed as `set_model_attn2_replace`
    keys it. DiT: each `double_blocks[i]` (Flux) or `joint_blocks[i]` (MMDiT), keyed as `patches_replace["dit"]`.
    """
    net = model.get_model_object("diffusion_model")
    found: dict[HookPoint, int] = {}
    groups = (("input", getattr(net, "input_blocks", [])),
              ("middle", [getattr(net, "middle_block", [])]),
              ("output", getattr(net, "output_blocks", [])))
    for block, sequence in groups:
        for number, stage in enumerate(sequence):
            for module in stage:
                for index, transformer in enumerate(getattr(module, "transformer_blocks", [])):
                    attn2 = getattr(transformer, "attn2", None)
                    if attn2 is not None:
                        key = (block, number, index)
                        found[HookPoint("attn2", key, (key, key[:2]))] = attn2.to_q.weight.shape[0]
    for index, block in enumerate(getattr(net, "double_blocks", [])):
        if getattr(block, "flipped_img_txt", False):
            continue  # image tokens first in the joint attention: not the layout the Flux patch reads
        key = ("double_block", index)
        found[HookPoint("dit", key, (key,))] = int(block.hidden_size)
    for index, block in enumerate(getattr(net, "joint_blocks", None) or []):  # MMDiT (SD3/SD3.5)
        key = ("double_block", index)
        found[HookPoint("dit", key, (key,))] = int(block.x_block.attn.qkv.weight.shape[1])
    return found


def check_model_fits(model: comfy.model_patcher.ModelPatcher, spec: AdapterSpec, adapter_name: str,
                     where: str) -> None:
    """Refuse an adapter whose family, layers or widths do not match the model, naming both."""
    found = model_points(model)
    families.check_points(families.injection_for(spec), spec, found, adapter_name, families.describe_model(found),
                          where)


def sigma_window(model: comfy.model_patcher.ModelPatcher, start: float, end: float,
                 where: str = "ApplyIPAdapter") -> tuple[float, float] | None:
    """Convert schedule fractions to (sigma_start, sigma_end) as ControlNetApplyAdvanced does."""
    for name, value in (("start_percent", start), ("end_percent", end)):
        if not 0.0 <= value <= 1.0:  # also catches NaN, which ComfyUI's min/max validation lets through
            raise ImagePromptError(f"{where}: {name} is {value}; give a number between 0 and 1.")
    if start <= 0.0 and end >= 1.0:
        return None
    sampling = model.get_model_object("model_sampling")
    return float(sampling.percent_to_sigma(start)), float(sampling.percent_to_sigma(end))


#: The key our wrappers are registered under (`ModelPatcher.add_wrapper_with_key`).
WRAPPER_KEY = "ip_adapter_tested"


def patched_clone(model: comfy.model_patcher.ModelPatcher, branch: ImageBranch) -> Any:
    """Clone `model` and register the family's patch at each point, wrapping what is there.

    `set_model_patch_replace(patch, hook, *key)` is the setter behind
    `set_model_attn2_replace`; it copies the options dicts, so the input model's
    options are never touched.
    """
    clone = model.clone()
    replaces = clone.model_options.get("transformer_options", {}).get("patches_replace", {})

    def existing(point: HookPoint) -> Any:
        current = replaces.get(point.hook, {})
        for key in point.lookup:
            if key in current:
                return current[key]
        return None

    injection = families.injection_for(branch.adapter.spec)
    backends = Backends(attention_backend(), image_attention_backend())
    for point, patch in families.make_patches(injection, branch, existing, backends):
        clone.set_model_patch_replace(patch, point.hook, *point.key)
    for kind, wrapper in injection.wrappers(branch):
        clone.add_wrapper_with_key(kind, WRAPPER_KEY, wrapper)
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


def load_clip_vision(path: str) -> Any:
    """ComfyUI's own CLIP vision loader (what `Load CLIP Vision` runs) on a file found by content."""
    import comfy.clip_vision

    model = comfy.clip_vision.load(path)
    if model is None:
        raise ImagePromptError(f"ComfyUI could not load '{path}' as a CLIP vision model; download it again.")
    return model
