"""Tiny UNets with the real SD1.5 / SDXL block topology, in ComfyUI and in diffusers.

The ComfyUI models are built by ComfyUI's own classes (``comfy.supported_models.SD15`` /
``SDXL`` configs, ``get_model`` -> ``comfy.model_base.BaseModel`` / ``SDXL``, wrapped in a
``comfy.model_patcher.ModelPatcher``); only the width shrinks (``model_channels`` 32 instead of
320). Every block, transformer depth and attention slot is where the full-size model has it:
16 cross-attention (attn2) layers for SD1.5, 70 for SDXL. ``diffusers_twin`` builds the same
network as ``diffusers.UNet2DConditionModel`` with the same weights, mapped by ComfyUI's
``comfy.utils.unet_to_diffusers``.

How the two noise predictions are made comparable (what the parity tests compare):

* ComfyUI works in the variance-exploding convention: the sampler's ``x`` is
  ``x0 + sigma * noise``, and ``comfy_eps(x, sigma)`` runs the path KSampler runs
  (``CFGGuider`` -> ``sampling_function`` -> ``calc_cond_batch`` -> ``BaseModel.apply_model``).
  Inside, the EPS model feeds the UNet ``x / sqrt(sigma^2 + 1)`` and the timestep
  ``model_sampling.timestep(sigma)`` (the index of the nearest training sigma), and returns
  ``denoised = x - eps * sigma``; ``comfy_eps`` returns ``(x - denoised) / sigma``.
* diffusers works in the DDPM convention: the UNet input is ``x_t = x / sqrt(sigma^2 + 1)``.
  ``diffusers_eps(unet, x, t, ..., sigma=sigma)`` applies that same scaling (omit ``sigma`` to
  pass an already-scaled input) and calls the UNet at timestep ``t``.
* Use ``sigma_for_timestep(patcher, t)`` to pick a sigma that is exactly a training sigma, so
  ComfyUI's timestep is exactly ``t``; ``timestep_for_sigma`` gives the timestep ComfyUI uses for
  any sigma.
* SDXL: ComfyUI builds its 2816-wide ``y`` from ``pooled_output`` plus six size embeddings
  (height, width, crop_h, crop_w, target_height, target_width; default: the latent size * 8).
  ``sdxl_added_cond_kwargs`` gives diffusers the same ``text_embeds`` / ``time_ids``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

# ComfyUI's attn2 replace keys, in the order ComfyUI executes them (input, middle, output).
SD15_ATTN2_SLOTS: tuple[tuple[str, int], ...] = (
    ("input", 1), ("input", 2), ("input", 4), ("input", 5), ("input", 7), ("input", 8),
    ("middle", 0),
    *(("output", n) for n in range(3, 12)),
)

SDXL_ATTN2_SLOTS: tuple[tuple[str, int, int], ...] = (
    *(("input", n, i) for n in (4, 5) for i in range(2)),
    *(("input", n, i) for n in (7, 8) for i in range(10)),
    *(("middle", 0, i) for i in range(10)),
    *(("output", n, i) for n in (0, 1, 2) for i in range(10)),
    *(("output", n, i) for n in (3, 4, 5) for i in range(2)),
)

assert len(SD15_ATTN2_SLOTS) == 16 and len(SDXL_ATTN2_SLOTS) == 70


# --------------------------------------------------------------------------------------------
# UNet configs (the dict ComfyUI's model detection produces, at a smaller width)
# --------------------------------------------------------------------------------------------

def sd15_unet_config(model_channels: int = 32, dtype: torch.dtype = torch.float32) -> dict:
    """SD1.5's ``unet_config`` as ``comfy.model_detection`` reports it, with a smaller width."""
    return {
        "use_checkpoint": False, "image_size": 32, "out_channels": 4, "in_channels": 4,
        "use_spatial_transformer": True, "legacy": False, "adm_in_channels": None,
        "dtype": dtype, "model_channels": model_channels, "num_res_blocks": [2, 2, 2, 2],
        "channel_mult": [1, 2, 4, 4], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
        "transformer_depth_middle": 1, "transformer_depth_output": [1] * 9 + [0] * 3,
        "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
        "use_temporal_attention": False, "use_temporal_resblock": False,
    }


def sdxl_unet_config(
    model_channels: int = 32, num_head_channels: int = 16, dtype: torch.dtype = torch.float32
) -> dict:
    """SDXL base's ``unet_config`` with a smaller width; heads = width / ``num_head_channels``."""
    return {
        "use_checkpoint": False, "image_size": 32, "out_channels": 4, "in_channels": 4,
        "use_spatial_transformer": True, "legacy": False, "num_classes": "sequential",
        "adm_in_channels": 2816, "dtype": dtype, "model_channels": model_channels,
        "num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4],
        "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_middle": 10,
        "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
        "use_linear_in_transformer": True, "context_dim": 2048,
        "num_head_channels": num_head_channels,
        "use_temporal_attention": False, "use_temporal_resblock": False,
    }


# --------------------------------------------------------------------------------------------
# ComfyUI models
# --------------------------------------------------------------------------------------------

def init_unet_weights(unet: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter a deterministic, well-scaled value (``comfy.ops`` leaves them empty).

    Matrices and convolution kernels: N(0, 1/fan_in), so each layer keeps activations O(1) and
    attention logits q.k/sqrt(d) have variance about 1 (no saturation). Norm scales 1 + 0.1 N,
    norm shifts and biases 0.1 N / 0.02 N. Nothing is zero, so every layer matters in parity
    tests. Values are drawn in float32 in ``named_parameters`` order, then cast.
    """
    gen = torch.Generator().manual_seed(seed)
    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    with torch.no_grad():
        for module in unet.modules():
            for name, param in module.named_parameters(recurse=False):
                noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
                if isinstance(module, norms):
                    value = (1.0 + 0.1 * noise) if name == "weight" else 0.1 * noise
                elif param.ndim >= 2:
                    value = noise / math.sqrt(param[0].numel())
                else:
                    value = 0.02 * noise
                param.copy_(value.to(device=param.device, dtype=param.dtype))


def _comfy_model(config_cls, unet_config: dict, seed: int, dtype: torch.dtype, device):
    import comfy.model_patcher

    device = torch.device(device or "cpu")
    model_config = config_cls(unet_config)
    # A config class overlays its ``unet_extra_config`` (head settings) in __init__; put ours back.
    for key in ("num_heads", "num_head_channels"):
        if key in unet_config:
            model_config.unet_config[key] = unet_config[key]
    if "num_heads" not in unet_config:
        model_config.unet_config["num_heads"] = -1
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({}, "", device=device)
    init_unet_weights(model.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def comfy_sd15_model(
    seed: int = 0, model_channels: int = 32, dtype: torch.dtype = torch.float32, device=None
):
    """A ``ModelPatcher`` around a tiny SD1.5 ``BaseModel`` (EPS, 16 attn2 slots, 8 heads).

    Built from ``comfy.supported_models.SD15`` with ``model_channels`` overridden; context 768;
    load and offload device CPU unless ``device`` says otherwise.
    """
    import comfy.supported_models

    return _comfy_model(
        comfy.supported_models.SD15, sd15_unet_config(model_channels, dtype), seed, dtype, device
    )


def comfy_sdxl_model(
    seed: int = 0,
    model_channels: int = 32,
    dtype: torch.dtype = torch.float32,
    num_head_channels: int = 16,
    device=None,
):
    """A ``ModelPatcher`` around a tiny SDXL ``comfy.model_base.SDXL`` (EPS, 70 attn2 slots).

    Built from ``comfy.supported_models.SDXL``; context 2048, adm 2816, linear projections,
    heads = width / ``num_head_channels`` (2, 4, 8 at width 32).
    """
    import comfy.supported_models

    return _comfy_model(
        comfy.supported_models.SDXL,
        sdxl_unet_config(model_channels, num_head_channels, dtype),
        seed,
        dtype,
        device,
    )


# --------------------------------------------------------------------------------------------
# diffusers twin
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Noise predictions
# --------------------------------------------------------------------------------------------

def model_sampling(model_patcher):
    return model_patcher.get_model_object("model_sampling")


def sigma_for_timestep(model_patcher, timestep: int) -> float:
    """The training sigma at integer ``timestep``; ComfyUI maps it back to exactly ``timestep``."""
    return float(model_sampling(model_patcher).sigmas[int(timestep)])


def timestep_for_sigma(model_patcher, sigma: float) -> float:
    """The timestep ComfyUI's EPS model feeds the UNet for ``sigma`` (nearest training sigma)."""
    ms = model_sampling(model_patcher)
    return float(ms.timestep(torch.tensor([float(sigma)], dtype=ms.sigmas.dtype))[0])


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


class _OneModelCall:
    """A stand-in sampler: calls the guided model once at ``sigmas[0]`` on the given ``x``."""

    def __init__(self):
        self.denoised = None

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None,
               denoise_mask=None, disable_pbar=False):
        sigma = sigmas[0] * noise.new_ones((noise.shape[0],))
        self.denoised = model_wrap(noise, sigma, **extra_args)
        return self.denoised


def _conditioning(context, pooled, cond_extra) -> list:
    if isinstance(context, list):  # already ComfyUI CONDITIONING
        return context
    extra = dict(cond_extra or {})
    if pooled is not None:
        extra["pooled_output"] = pooled
    return [[context, extra]]


def comfy_eps(
    model_patcher,
    x: torch.Tensor,
    sigma: float,
    context,
    pooled: torch.Tensor | None = None,
    *,
    negative=None,
    negative_pooled: torch.Tensor | None = None,
    cfg: float = 1.0,
    cond_extra: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """One noise prediction through the path KSampler uses, at noise level ``sigma``.

    ``x`` is the noisy latent in ComfyUI's convention (``x0 + sigma * noise``). ``context`` is a
    text-embedding tensor [B or 1, tokens, context_dim] or ready-made CONDITIONING; SDXL also
    needs ``pooled`` [B or 1, 1280] (``cond_extra`` may set width/height/crop_w/...).
    ``negative`` (same forms) is used when ``cfg != 1``.

    Runs ``comfy.samplers.CFGGuider.sample`` with a sampler that makes a single model call: model
    loading, ``pre_run``/cleanup callbacks, OUTER_SAMPLE / PREDICT_NOISE / CALC_COND_BATCH /
    APPLY_MODEL wrappers, ``process_conds``, ``calc_cond_batch`` and every patch in
    ``model_options`` (attn2 replace patches included) act as during sampling. Returns
    ``(x - denoised) / sigma`` as float32 (for cfg 1 this is the UNet's eps output).
    """
    import comfy.samplers

    guider = comfy.samplers.CFGGuider(model_patcher)
    positive = _conditioning(context, pooled, cond_extra)
    neg = positive if negative is None else _conditioning(negative, negative_pooled, cond_extra)
    guider.set_conds(positive, neg)
    guider.set_cfg(cfg)
    sampler = _OneModelCall()
    sigmas = torch.tensor([float(sigma), 0.0], dtype=torch.float32)
    with torch.no_grad():
        guider.sample(x, torch.zeros_like(x), sampler, sigmas, seed=seed, disable_pbar=True)
    denoised = sampler.denoised.to(device=x.device, dtype=torch.float32)
    return (x.float() - denoised) / float(sigma)


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


def attn2_call_key(extra_options: Mapping[str, Any]) -> tuple[str, int, int]:
    """(block, number, transformer_index) of the layer an attn2 replace patch was called for."""
    block = extra_options["block"]
    return (block[0], block[1], extra_options.get("block_index", 0))
