"""Tiny UNets with the real SD1.5 / SDXL block topology, in ComfyUI and in diffusers.

The ComfyUI models are built by ComfyUI's own classes (``comfy.supported_models.SD15`` /
``SDXL`` configs, ``get_model`` -> ``comfy.model_base.BaseModel`` / ``SDXL``, wrapped in a
``comfy.model_patcher.ModelPatcher``); only the width shrinks (``model_channels`` 32 instead of
320). Every block, transformer depth and attention slot is where the full-size model has it:
16 cross-attention (attn2) layers for SD1.5, 70 for SDXL. ``support.diffusers_twin`` builds
the same network as ``diffusers.UNet2DConditionModel`` with the same weights.

How the two noise predictions are made comparable (what the parity tests compare):

* ComfyUI works in the variance-exploding convention: the sampler's ``x`` is
  ``x0 + sigma * noise``, and ``comfy_eps(x, sigma)`` runs the path KSampler runs
  (``CFGGuider`` -> ``sampling_function`` -> ``calc_cond_batch`` -> ``BaseModel.apply_model``).
  Inside, the EPS model feeds the UNet ``x / sqrt(sigma^2 + 1)`` and the timestep
  ``model_sampling.timestep(sigma)`` (the index of the nearest training sigma), and returns
  ``denoised = x - eps * sigma``; ``comfy_eps`` returns ``(x - denoised) / sigma``.
* diffusers works in the DDPM convention: the UNet input is ``x_t = x / sqrt(sigma^2 + 1)``.
  ``diffusers_twin.diffusers_eps(unet, x, t, ..., sigma=sigma)`` applies that same scaling
  (omit ``sigma`` to pass an already-scaled input) and calls the UNet at timestep ``t``.
* Use ``sigma_for_timestep(patcher, t)`` to pick a sigma that is exactly a training sigma, so
  ComfyUI's timestep is exactly ``t``; ``timestep_for_sigma`` gives the timestep ComfyUI uses for
  any sigma.
* SDXL: ComfyUI builds its 2816-wide ``y`` from ``pooled_output`` plus six size embeddings
  (height, width, crop_h, crop_w, target_height, target_width; default: the latent size * 8).
  ``diffusers_twin.sdxl_added_cond_kwargs`` gives diffusers the same ``text_embeds`` /
  ``time_ids``.
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


def attn2_call_key(extra_options: Mapping[str, Any]) -> tuple[str, int, int]:
    """(block, number, transformer_index) of the layer an attn2 replace patch was called for."""
    block = extra_options["block"]
    return (block[0], block[1], extra_options.get("block_index", 0))
