"""A tiny Flux (dev layout) in ComfyUI and its diffusers twin, plus XLabs adapter files.

The ComfyUI model is made the way ComfyUI loads a Flux checkpoint: a state dict in
the Flux checkpoint layout goes through ``comfy.model_detection.model_config_from_unet``
(which must pick ``supported_models.Flux``), then ``get_model`` and
``load_model_weights``. Only the width shrinks: hidden 64, 2 heads of 32 with RoPE
axes [8, 12, 12] (ComfyUI's detection fixes 24 heads and axes [16, 56, 56], so
those two entries are set after detection). Every block is there: 19 double
blocks (what XLabs adapters patch) and 2 single blocks. The text width stays 4096
(T5), which is also the width of the XLabs image tokens.

``diffusers_twin`` builds ``diffusers.FluxTransformer2DModel`` with the same
weights (``comfy.utils.flux_to_diffusers``), and ``diffusers_velocity`` runs it as
``FluxPipeline`` does (packed 2x2 latents, ids, timestep = sigma).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

HIDDEN, HEADS, AXES, CONTEXT, VEC, SINGLE = 64, 2, [8, 12, 12], 4096, 32, 2
DOUBLE = 19
CLIP_DIM = 768


def _unet_config(hidden: int = HIDDEN, heads: int = HEADS, axes: list[int] | None = None,
                 single: int = SINGLE) -> dict:
    return {"image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": VEC,
            "context_in_dim": CONTEXT, "hidden_size": hidden, "mlp_ratio": 4.0, "num_heads": heads,
            "depth": DOUBLE, "depth_single_blocks": single, "axes_dim": list(axes or AXES), "theta": 10000,
            "patch_size": 2, "qkv_bias": True, "guidance_embed": True, "txt_ids_dims": []}


def axes_for(head_dim: int) -> list[int]:
    """RoPE axes summing to `head_dim` in Flux's proportions (16, 56, 56 for 128), each even."""
    first = max(2, (head_dim // 8) // 2 * 2)
    rest = (head_dim - first) // 2 // 2 * 2
    return [head_dim - 2 * rest, rest, rest]


def init_flux_weights(model: torch.nn.Module, seed: int) -> None:
    """Deterministic, well-scaled weights: matrices N(0, 1/fan_in), RMSNorm scales 1 + 0.1 N, biases 0.02 N."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
            if name.endswith(".scale"):
                value = 1.0 + 0.1 * noise
            elif param.ndim >= 2:
                value = noise / math.sqrt(param[0].numel())
            else:
                value = 0.02 * noise
            param.copy_(value.to(param.dtype))


def flux_checkpoint(seed: int = 0, **size) -> dict[str, torch.Tensor]:
    """A random Flux-dev diffusion-model state dict in the checkpoint layout, at the small width.

    `size`: hidden, heads, axes, single (see `_unet_config`).
    """
    import comfy.ldm.flux.model
    import comfy.ops

    config = {k: v for k, v in _unet_config(**size).items() if k != "image_model"}
    net = comfy.ldm.flux.model.Flux(operations=comfy.ops.disable_weight_init, **config)
    init_flux_weights(net, seed)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def comfy_flux_model(seed: int = 0, dtype: torch.dtype = torch.float32, device: str = "cpu", **size):
    """A ``ModelPatcher`` around a tiny Flux dev, detected and loaded by ComfyUI's own code.

    `size` overrides hidden / heads / axes / single (default: the small test width).
    """
    import comfy.model_detection
    import comfy.model_patcher
    import comfy.supported_models

    config = _unet_config(**size)
    sd = flux_checkpoint(seed, **size)
    model_config = comfy.model_detection.model_config_from_unet(sd, "")
    assert type(model_config) is comfy.supported_models.Flux, type(model_config)
    assert model_config.unet_config["depth"] == DOUBLE
    assert model_config.unet_config["hidden_size"] == config["hidden_size"]
    model_config.unet_config.update(num_heads=config["num_heads"], axes_dim=config["axes_dim"])
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model(sd, "", device=torch.device(device))
    model.load_model_weights(sd, "")
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device(device),
                                            offload_device=torch.device(device))


def diffusers_twin(model_patcher):
    """``diffusers.FluxTransformer2DModel`` with the ComfyUI model's weights (every parameter mapped)."""
    import comfy.utils
    from diffusers import FluxTransformer2DModel

    twin = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=DOUBLE, num_single_layers=SINGLE, attention_head_dim=HIDDEN // HEADS,
        num_attention_heads=HEADS, joint_attention_dim=CONTEXT, pooled_projection_dim=VEC, guidance_embeds=True,
        axes_dims_rope=tuple(AXES),
    )
    source = model_patcher.model.diffusion_model.state_dict()
    mapping = comfy.utils.flux_to_diffusers(model_patcher.model.model_config.unet_config)
    new_sd, used = {}, set()
    for key in twin.state_dict():
        ref = mapping[key]
        if isinstance(ref, str):
            new_sd[key], name = source[ref], ref
        elif ref[1] is None:  # (key, None, function)
            new_sd[key], name = ref[2](source[ref[0]]), ref[0]
        else:
            name, (dim, offset, size) = ref
            new_sd[key] = source[name].narrow(dim, offset, size)
        used.add(name)
    unused = sorted(set(source) - used)
    assert not unused, f"ComfyUI weights the twin does not use: {unused[:5]}"
    twin.load_state_dict({k: v.clone() for k, v in new_sd.items()}, strict=True)
    return twin.eval()


def pack(latent: torch.Tensor) -> torch.Tensor:
    """[B, 16, H, W] -> [B, H/2 * W/2, 64], as FluxPipeline._pack_latents (and ComfyUI's patchify)."""
    b, c, h, w = latent.shape
    x = latent.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, _, d = tokens.shape
    x = tokens.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, h, w)


@torch.no_grad()
def diffusers_velocity(twin, x: torch.Tensor, sigma: float, context: torch.Tensor, pooled: torch.Tensor,
                       guidance: float, ip_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """The transformer's output for latent ``x`` [B, 16, H, W] at ``sigma``, unpacked; as FluxPipeline calls it.

    ``ip_embeds`` [B, images, 768]: CLIP image_embeds per row, passed as FluxPipeline passes them.
    """
    b, _, h, w = x.shape
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] += torch.arange(h // 2)[:, None]
    ids[..., 2] += torch.arange(w // 2)[None, :]
    kwargs = {} if ip_embeds is None else {"joint_attention_kwargs": {"ip_adapter_image_embeds": [ip_embeds]}}
    out = twin(hidden_states=pack(x), timestep=torch.full((b,), float(sigma)), guidance=torch.full((b,), guidance),
               pooled_projections=pooled, encoder_hidden_states=context, txt_ids=torch.zeros(context.shape[1], 3),
               img_ids=ids.reshape(-1, 3), return_dict=False, **kwargs)[0]
    return unpack(out, h, w)


def xlabs_state_dict(tokens: int = 4, seed: int = 0, hidden: int = HIDDEN, width: int = CONTEXT,
                     clip_dim: int = CLIP_DIM, blocks: int = DOUBLE) -> dict[str, torch.Tensor]:
    """A random XLabs flux-ip-adapter file's tensors (v1: 4 tokens, v2: 16), real key names, small hidden width."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * scale

    sd = {
        "ip_adapter_proj_model.proj.weight": rand(tokens * width, clip_dim, scale=clip_dim ** -0.5),
        "ip_adapter_proj_model.proj.bias": rand(tokens * width, scale=0.02),
        "ip_adapter_proj_model.norm.weight": 1.0 + rand(width, scale=0.1),
        "ip_adapter_proj_model.norm.bias": rand(width, scale=0.1),
    }
    for i in range(blocks):
        for kv in ("k", "v"):
            prefix = f"double_blocks.{i}.processor.ip_adapter_double_stream_{kv}_proj"
            sd[f"{prefix}.weight"] = rand(hidden, width, scale=width ** -0.5)
            sd[f"{prefix}.bias"] = rand(hidden, scale=0.02)
    return sd


def xlabs_shapes(tokens: int, hidden: int = 3072, width: int = 4096, clip_dim: int = CLIP_DIM) -> dict[str, tuple]:
    """Key -> shape of the published XLabs files (v1: tokens 4, v2: 16) at full size, for meta tensors."""
    shapes: dict[str, tuple] = {
        "ip_adapter_proj_model.proj.weight": (tokens * width, clip_dim),
        "ip_adapter_proj_model.proj.bias": (tokens * width,),
        "ip_adapter_proj_model.norm.weight": (width,),
        "ip_adapter_proj_model.norm.bias": (width,),
    }
    for i in range(DOUBLE):
        for kv in ("k", "v"):
            prefix = f"double_blocks.{i}.processor.ip_adapter_double_stream_{kv}_proj"
            shapes[f"{prefix}.weight"], shapes[f"{prefix}.bias"] = (hidden, width), (hidden,)
    return shapes


def save(sd: dict[str, torch.Tensor], path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path
