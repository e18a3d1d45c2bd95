"""ComfyUI glue for the SD3.5 family: reading the MMDiT, registering the joint-block patches.

Every ComfyUI-facing call for SD3.5 lives here (the math is in `ip_adapter.sd3`):
the host's joint blocks and their QK-norm gains, and the sigma -> timestep factor.
Registration on a clone is the shared `comfy_bridge.patched_clone` (the family seam).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..ip_adapter.errors import ImagePromptError
from ..ip_adapter.sd3.attention import head_ratio
from ..ip_adapter.sd3.format import SD3AdapterShape


def joint_blocks(model: Any) -> list:
    """The MMDiT's joint blocks, or [] for a model that has none (a UNet, Flux)."""
    diffusion_model = model.get_model_object("diffusion_model")
    return list(getattr(diffusion_model, "joint_blocks", None) or [])


def _looks_like(model: Any) -> str:
    diffusion_model = model.get_model_object("diffusion_model")
    if hasattr(diffusion_model, "double_blocks"):
        return "Flux"
    if hasattr(diffusion_model, "input_blocks"):
        return "an SD1.5/SDXL UNet"
    return type(diffusion_model).__name__


def check_model_fits(model: Any, shape: SD3AdapterShape, adapter_name: str, where: str) -> list:
    """Refuse a model whose joint blocks do not match the adapter (count, width, head width); return the blocks."""
    blocks = joint_blocks(model)
    if not blocks:
        raise ImagePromptError(
            f"{where}: '{adapter_name}' is an SD3.5 IP-Adapter, but the model is {_looks_like(model)} (no MMDiT "
            "joint blocks). Use it with an SD3.5-Large model, or load an adapter made for this model."
        )
    attn = blocks[0].x_block.attn
    width, head_dim = attn.qkv.weight.shape[1], attn.head_dim
    if len(blocks) != shape.blocks or width != shape.hidden_size or head_dim != shape.head_dim:
        raise ImagePromptError(
            f"{where}: '{adapter_name}' is for an MMDiT with {shape.blocks} joint blocks {shape.hidden_size} wide "
            f"(SD3.5-Large: 38 x 2432), but the model has {len(blocks)} blocks {width} wide with {head_dim}-wide "
            "heads. Use the adapter with the model it was trained for."
        )
    ln_q = getattr(attn, "ln_q", None)
    if ln_q is not None and not isinstance(ln_q, torch.nn.Identity) and type(ln_q).__name__ != "RMSNorm":
        raise ImagePromptError(f"{where}: the model's QK-norm is {type(ln_q).__name__}; the SD3.5 adapter needs "
                               "RMS QK-norm (SD3.5) or none (SD3).")
    return blocks


def _gain(norm: Any) -> Tensor | None:
    weight = getattr(norm, "weight", None)
    return None if weight is None else weight.detach().to(device="cpu", dtype=torch.float32).clone()


def block_ratios(blocks: list, adapter: Any, where: str) -> tuple[tuple[tuple[Tensor, Tensor], ...], bool]:
    """Per block (norm_q / host ln_q, norm_k / host ln_k) gains, and whether the host RMS-normalises Q/K."""
    ratios, normed = [], True
    for index, block in enumerate(blocks):
        host_q, host_k = _gain(block.x_block.attn.ln_q), _gain(block.x_block.attn.ln_k)
        normed = host_q is not None
        if normed and bool((host_q.abs() < 1e-12).any() or (host_k.abs() < 1e-12).any()):
            raise ImagePromptError(f"{where}: joint block {index} of the model has a zero QK-norm gain; its image "
                                   "query cannot be recovered without re-projecting. Is the model damaged?")
        ip = adapter.ip_adapter[str(index)]
        ratios.append((head_ratio(ip.norm_q.weight.detach().cpu(), host_q),
                       head_ratio(ip.norm_k.weight.detach().cpu(), host_k)))
    return tuple(ratios), normed


def timestep_multiplier(model: Any) -> float:
    """ComfyUI's sigma -> timestep factor for flow models (SD3: 1000)."""
    sampling = model.get_model_object("model_sampling")
    return float(getattr(sampling, "multiplier", 1000.0))
