"""The diffusers twin of a tiny ComfyUI UNet: same network, same weights, comparable noise predictions.

``diffusers_twin`` builds ``diffusers.UNet2DConditionModel`` from the ComfyUI model's
``unet_config`` and copies its weights key by key through ComfyUI's
``comfy.utils.unet_to_diffusers``. ``diffusers_eps`` calls it in diffusers' DDPM convention;
``support.unets`` explains how that lines up with ComfyUI's ``comfy_eps`` (input scaling,
timesteps, SDXL's size embeddings, given to diffusers by ``sdxl_added_cond_kwargs``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch


def diffusers_config(unet_config: Mapping[str, Any]) -> dict:
    """``UNet2DConditionModel`` kwargs reproducing a ComfyUI SD-style ``unet_config``."""
    res = list(unet_config["num_res_blocks"])
    mult = list(unet_config["channel_mult"])
    if len(set(res)) != 1:
        raise ValueError(f"diffusers needs the same num_res_blocks at every level, got {res}")
    per_block = res[0]
    mc = unet_config["model_channels"]
    widths = [mc * m for m in mult]
    depth_in = list(unet_config["transformer_depth"])
    depth_out = list(unet_config["transformer_depth_output"])
    depth_mid = unet_config["transformer_depth_middle"]
    level_depth = [depth_in[i * per_block] for i in range(len(mult))]
    for i, d in enumerate(level_depth):
        if set(depth_in[i * per_block:(i + 1) * per_block]) != {d}:
            raise ValueError(f"uneven transformer depth inside level {i}: {depth_in}")
        out = depth_out[i * (per_block + 1):(i + 1) * (per_block + 1)]
        if set(out) != {d}:
            raise ValueError(f"output depth {out} differs from input depth {d} at level {i}")
    attn_depths = {d for d in level_depth if d > 0}
    down = [("CrossAttnDownBlock2D" if d > 0 else "DownBlock2D") for d in level_depth]
    up = [("CrossAttnUpBlock2D" if d > 0 else "UpBlock2D") for d in reversed(level_depth)]
    if attn_depths == {depth_mid}:
        layers: int | list[int] = depth_mid
    else:
        # diffusers gives the mid block the last level's depth; levels without attention
        # ignore their entry.
        layers = [d if d > 0 else 1 for d in level_depth]
        if level_depth[-1] == 0:
            layers[-1] = depth_mid
        if layers[-1] != depth_mid:
            raise ValueError(f"mid depth {depth_mid} differs from the last level's {layers[-1]}")

    if unet_config.get("num_heads", -1) not in (-1, None):
        heads: int | list[int] = unet_config["num_heads"]  # diffusers calls this attention_head_dim
    else:
        heads = [max(w // unet_config["num_head_channels"], 1) for w in widths]

    cfg = {
        "sample_size": unet_config.get("image_size", 32),
        "in_channels": unet_config["in_channels"],
        "out_channels": unet_config["out_channels"],
        "down_block_types": tuple(down),
        "up_block_types": tuple(up),
        "block_out_channels": tuple(widths),
        "layers_per_block": per_block,
        "transformer_layers_per_block": layers,
        "cross_attention_dim": unet_config["context_dim"],
        "attention_head_dim": heads,
        "use_linear_projection": bool(unet_config["use_linear_in_transformer"]),
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
    }
    adm = unet_config.get("adm_in_channels")
    if adm:
        cfg.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=adm,
        )
    return cfg


def diffusers_twin(model_patcher):
    """A ``diffusers.UNet2DConditionModel`` with the ComfyUI model's exact weights (eval mode).

    The config comes from the ComfyUI ``unet_config``; weights are copied key by key through
    ``comfy.utils.unet_to_diffusers``; every diffusers parameter must be mapped and every ComfyUI
    parameter used.
    """
    import comfy.utils
    from diffusers import UNet2DConditionModel

    base = model_patcher.model
    unet_config = base.model_config.unet_config
    twin = UNet2DConditionModel(**diffusers_config(unet_config))
    mapping = comfy.utils.unet_to_diffusers(unet_config)
    source = base.diffusion_model.state_dict()
    target = twin.state_dict()
    new_sd, used, missing = {}, set(), []
    for key, ref in target.items():
        comfy_key = mapping.get(key)
        if comfy_key is None or comfy_key not in source:
            missing.append(key)
            continue
        value = source[comfy_key]
        if value.shape != ref.shape:
            if value.numel() != ref.numel():
                raise ValueError(f"{key}: shape {tuple(ref.shape)} vs ComfyUI {comfy_key} {tuple(value.shape)}")
            value = value.reshape(ref.shape)
        new_sd[key] = value.detach().clone()
        used.add(comfy_key)
    unused = sorted(set(source) - used)
    if missing or unused:
        raise ValueError(f"diffusers keys without a ComfyUI weight: {missing[:10]}; unused ComfyUI weights: {unused[:10]}")
    twin.load_state_dict(new_sd, strict=True)
    dtype = next(base.diffusion_model.parameters()).dtype
    if dtype != torch.float32:
        twin = twin.to(dtype)
    return twin.eval()


def sdxl_added_cond_kwargs(
    pooled: torch.Tensor,
    height: int,
    width: int,
    crop: tuple[int, int] = (0, 0),
    target: tuple[int, int] | None = None,
) -> dict:
    """diffusers' SDXL ``added_cond_kwargs`` equal to what ComfyUI's ``SDXL.encode_adm`` builds.

    ``height``/``width`` are in pixels (ComfyUI's default: latent size * 8); ``crop`` is
    (crop_h, crop_w); ``target`` (height, width) defaults to the size.
    """
    th, tw = target if target is not None else (height, width)
    ids = torch.tensor([[height, width, crop[0], crop[1], th, tw]], dtype=torch.float32)
    return {"text_embeds": pooled, "time_ids": ids.repeat(pooled.shape[0], 1).to(pooled.device)}


def _batched(value, batch: int, dtype: torch.dtype):
    """Expand a tensor to `batch` rows and cast it; lists (IP-Adapter image_embeds) per element."""
    if isinstance(value, (list, tuple)):
        return [_batched(v, batch, dtype) for v in value]
    return (value.expand(batch, *value.shape[1:]) if value.shape[0] != batch else value).to(dtype)


def diffusers_eps(
    unet,
    x: torch.Tensor,
    timestep: float,
    encoder_hidden_states: torch.Tensor,
    added_cond_kwargs: Mapping[str, torch.Tensor] | None = None,
    *,
    sigma: float | None = None,
) -> torch.Tensor:
    """diffusers' noise prediction at ``timestep``.

    With ``sigma``, ``x`` is taken in ComfyUI's convention and scaled by 1/sqrt(sigma^2 + 1)
    first (ComfyUI's ``EPS.calculate_input``, diffusers' Euler ``scale_model_input``); without
    it ``x`` goes into the UNet as is. The timestep is a float tensor of the batch size, as
    ComfyUI passes it. Returns float32.
    """
    if sigma is not None:
        x = x / math.sqrt(float(sigma) ** 2 + 1.0)
    dtype = next(unet.parameters()).dtype
    t = torch.full((x.shape[0],), float(timestep), dtype=torch.float32, device=x.device)
    ctx = encoder_hidden_states
    if ctx.shape[0] != x.shape[0]:
        ctx = ctx.expand(x.shape[0], *ctx.shape[1:])
    kwargs = {}
    if added_cond_kwargs is not None:
        kwargs["added_cond_kwargs"] = {
            k: _batched(v, x.shape[0], dtype) for k, v in added_cond_kwargs.items()
        }
    with torch.no_grad():
        out = unet(x.to(dtype), t, encoder_hidden_states=ctx.to(dtype), **kwargs).sample
    return out.float()
