"""Tiny SD3.5-style MMDiTs, InstantX SD3.5 adapter files and SigLIP towers, with random weights.

* `diffusers_sd3`: diffusers' `SD3Transformer2DModel` (RMS QK-norm, as SD3.5) at a small
  depth; ComfyUI's MMDiT fixes head width 64 and heads = depth, so hidden = 64 * depth.
* `comfy_state_dict`: the same weights in ComfyUI's MMDiT keys (our own map, written from
  the facts in `comfy.utils.mmdit_to_diffusers`: q/k/v fused into `qkv`, diffusers'
  AdaLayerNormContinuous stores (scale, shift) where ComfyUI stores (shift, scale)).
* `comfy_sd3_model`: that state dict through `comfy.sd.load_diffusion_model_state_dict`,
  i.e. ComfyUI's own detection (`model_detection`) and `supported_models.SD3`.
* `sd35_adapter_state_dict`: the InstantX file's keys (`image_proj.*`, `ip_adapter.N.*`)
  with dims read from the arguments (`full=True` gives the published shapes).
* `tiny_comfy_siglip`: ComfyUI's `ClipVisionModel` with a SigLIP-384 config (729 tokens),
  narrow and shallow, loaded from an HF-layout state dict as CLIPVisionLoader would.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .checkpoints import key_seed

TEXT_DIM = 96  # T5 width stand-in (context_embedder in_features; detection reads it)
POOLED_DIM = 80  # CLIP-L+G pooled stand-in (y_embedder in_features)
POS_MAX = 16  # pos_embed_max_size: latents up to 32x32


def _init_(model: torch.nn.Module, seed: int) -> None:
    """Deterministic, well-scaled values for every parameter; norm gains 1 + 0.3 N (never 1: the ratio matters)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if name.endswith(("norm_q.weight", "norm_k.weight", "norm_added_q.weight", "norm_added_k.weight",
                              "norm_ip_k.weight")) or (param.ndim == 1 and "norm" in name and name.endswith("weight")):
                value = 1.0 + 0.3 * noise
            elif param.ndim >= 2:
                value = noise / math.sqrt(param[0].numel())
            else:
                value = 0.05 * noise
            param.copy_(value)


def diffusers_sd3(depth: int = 2, seed: int = 0, pos_max: int = POS_MAX):
    """diffusers' SD3Transformer2DModel, fp32, RMS QK-norm, every weight random; latents up to 2 x pos_max."""
    from diffusers import SD3Transformer2DModel

    model = SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=16, num_layers=depth, attention_head_dim=64,
        num_attention_heads=depth, joint_attention_dim=TEXT_DIM, caption_projection_dim=64 * depth,
        pooled_projection_dim=POOLED_DIM, out_channels=16, pos_embed_max_size=pos_max, qk_norm="rms_norm",
    )
    _init_(model, seed)
    # pos_embed is a fixed sin-cos buffer in both implementations; keep diffusers' values.
    return model.eval().requires_grad_(False)


def _swap(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat((b, a), dim=0)


def comfy_state_dict(model) -> dict[str, torch.Tensor]:
    """diffusers SD3 keys -> ComfyUI MMDiT keys (`joint_blocks.N.{x,context}_block.*`)."""
    sd = model.state_dict()
    depth = model.config.num_layers
    out = {
        "x_embedder.proj.weight": sd["pos_embed.proj.weight"], "x_embedder.proj.bias": sd["pos_embed.proj.bias"],
        "pos_embed": sd["pos_embed.pos_embed"],
        "context_embedder.weight": sd["context_embedder.weight"], "context_embedder.bias": sd["context_embedder.bias"],
        "final_layer.linear.weight": sd["proj_out.weight"], "final_layer.linear.bias": sd["proj_out.bias"],
        "final_layer.adaLN_modulation.1.weight": _swap(sd["norm_out.linear.weight"]),
        "final_layer.adaLN_modulation.1.bias": _swap(sd["norm_out.linear.bias"]),
    }
    for ours, theirs in (("t_embedder", "timestep_embedder"), ("y_embedder", "text_embedder")):
        for a, b in (("0", "1"), ("2", "2")):
            for end in ("weight", "bias"):
                out[f"{ours}.mlp.{a}.{end}"] = sd[f"time_text_embed.{theirs}.linear_{b}.{end}"]
    for i in range(depth):
        src, dst = f"transformer_blocks.{i}.", f"joint_blocks.{i}."
        last = i == depth - 1
        for end in ("weight", "bias"):
            out[f"{dst}x_block.attn.qkv.{end}"] = torch.cat([sd[f"{src}attn.to_{p}.{end}"] for p in "qkv"])
            out[f"{dst}context_block.attn.qkv.{end}"] = torch.cat([sd[f"{src}attn.add_{p}_proj.{end}"] for p in "qkv"])
            out[f"{dst}x_block.adaLN_modulation.1.{end}"] = sd[f"{src}norm1.linear.{end}"]
            ctx = sd[f"{src}norm1_context.linear.{end}"]
            out[f"{dst}context_block.adaLN_modulation.1.{end}"] = _swap(ctx) if last else ctx
            out[f"{dst}x_block.attn.proj.{end}"] = sd[f"{src}attn.to_out.0.{end}"]
            out[f"{dst}x_block.mlp.fc1.{end}"] = sd[f"{src}ff.net.0.proj.{end}"]
            out[f"{dst}x_block.mlp.fc2.{end}"] = sd[f"{src}ff.net.2.{end}"]
            if not last:
                out[f"{dst}context_block.attn.proj.{end}"] = sd[f"{src}attn.to_add_out.{end}"]
                out[f"{dst}context_block.mlp.fc1.{end}"] = sd[f"{src}ff_context.net.0.proj.{end}"]
                out[f"{dst}context_block.mlp.fc2.{end}"] = sd[f"{src}ff_context.net.2.{end}"]
        for stream, prefix in (("x_block", "norm_"), ("context_block", "norm_added_")):
            for p in "qk":
                out[f"{dst}{stream}.attn.ln_{p}.weight"] = sd[f"{src}attn.{prefix}{p}.weight"]
    return {k: v.clone() for k, v in out.items()}


def comfy_sd3_model(model):
    """A ModelPatcher made by ComfyUI's own detection and SD3 model class from `comfy_state_dict(model)`."""
    import comfy.sd

    patcher = comfy.sd.load_diffusion_model_state_dict(comfy_state_dict(model), model_options={"dtype": torch.float32})
    if patcher is None or type(patcher.model).__name__ != "SD3":
        raise RuntimeError("ComfyUI did not detect the tiny MMDiT as SD3")
    return patcher


# --------------------------------------------------------------------------------------------
# The InstantX SD3.5 adapter file
# --------------------------------------------------------------------------------------------

def sd35_adapter_shapes(blocks: int, hidden: int, *, clip_dim: int = 1152, dim: int = 1280, heads: int = 20,
                        tokens: int = 64, depth: int = 4, timestep_dim: int = 320,
                        head_dim: int = 64) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the published layout. Defaults are the release's, except `blocks`/`hidden` (38, 2432)."""
    inner = heads * 64
    shapes: dict[str, tuple[int, ...]] = {
        "image_proj.latents": (1, tokens, dim), "image_proj.proj_in.weight": (dim, clip_dim),
        "image_proj.proj_in.bias": (dim,), "image_proj.proj_out.weight": (hidden, dim),
        "image_proj.proj_out.bias": (hidden,), "image_proj.norm_out.weight": (hidden,),
        "image_proj.norm_out.bias": (hidden,),
        "image_proj.time_embedding.linear_1.weight": (dim, timestep_dim),
        "image_proj.time_embedding.linear_1.bias": (dim,),
        "image_proj.time_embedding.linear_2.weight": (dim, dim), "image_proj.time_embedding.linear_2.bias": (dim,),
    }
    for i in range(depth):
        p = f"image_proj.layers.{i}."
        shapes.update({
            p + "0.norm1.weight": (dim,), p + "0.norm1.bias": (dim,), p + "0.norm2.weight": (dim,),
            p + "0.norm2.bias": (dim,), p + "0.to_q.weight": (inner, dim), p + "0.to_kv.weight": (2 * inner, dim),
            p + "0.to_out.weight": (dim, inner), p + "1.0.weight": (dim,), p + "1.0.bias": (dim,),
            p + "1.1.weight": (4 * dim, dim), p + "1.3.weight": (dim, 4 * dim),
            p + "2.1.weight": (4 * dim, dim), p + "2.1.bias": (4 * dim,),
        })
    for b in range(blocks):
        p = f"ip_adapter.{b}."
        shapes.update({
            p + "norm_ip.linear.weight": (2 * hidden, dim), p + "norm_ip.linear.bias": (2 * hidden,),
            p + "to_k_ip.weight": (hidden, hidden), p + "to_v_ip.weight": (hidden, hidden),
            p + "norm_q.weight": (head_dim,), p + "norm_k.weight": (head_dim,), p + "norm_ip_k.weight": (head_dim,),
        })
    return shapes


def sd35_adapter_state_dict(blocks: int, hidden: int, seed: int = 0, **dims: int) -> dict[str, torch.Tensor]:
    """Random tensors in the published layout; values depend only on (seed, key)."""
    out = {}
    for key, shape in sd35_adapter_shapes(blocks, hidden, **dims).items():
        gen = torch.Generator().manual_seed(key_seed(seed, key))
        noise = torch.randn(shape, generator=gen)
        if len(shape) == 1 and key.endswith("weight") and "norm" in key:
            out[key] = 1.0 + 0.3 * noise
        elif key.endswith("latents"):
            out[key] = noise / math.sqrt(shape[-1])
        elif len(shape) == 2:
            out[key] = noise / math.sqrt(shape[1])
        else:
            out[key] = 0.05 * noise
    return out


def tiny_sd35_adapter(model, seed: int = 0, clip_dim: int = 48) -> dict[str, torch.Tensor]:
    """An adapter for `diffusers_sd3(...)`'s width and depth, with a narrow resampler (depth 4: diffusers fixes it)."""
    depth, hidden = model.config.num_layers, 64 * model.config.num_layers
    return sd35_adapter_state_dict(depth, hidden, seed, clip_dim=clip_dim, dim=128, heads=2, tokens=8, depth=4,
                                   timestep_dim=32)


def nested(sd: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The release's `.bin` layout: {"image_proj": {...}, "ip_adapter": {...}}."""
    out: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in sd.items():
        top, rest = key.split(".", 1)
        out[top][rest] = value
    return out


def load_into_diffusers(model, sd: dict[str, torch.Tensor], scale: float) -> None:
    """diffusers' own SD3 IP-Adapter loader on the same tensors, every processor at `scale`."""
    model._load_ip_adapter_weights(nested(sd), low_cpu_mem_usage=False)
    for name, processor in model.attn_processors.items():
        if name.startswith("transformer_blocks."):  # not the resampler's own attention
            processor.scale = scale


# --------------------------------------------------------------------------------------------
# SigLIP so400m-patch14-384 stand-in (ComfyUI's ClipVisionModel, HF key layout)
# --------------------------------------------------------------------------------------------

def siglip_config(hidden: int = 48, layers: int = 3, heads: int = 2) -> dict:
    """ComfyUI's `clip_vision_siglip_384.json` with a narrow, shallow tower (still 384 px, 729 tokens)."""
    import comfy.clip_vision

    config = json.loads((Path(comfy.clip_vision.__file__).parent / "clip_vision_siglip_384.json").read_text())
    config.update(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=heads)
    return config


def tiny_comfy_siglip(folder: Path, hidden: int = 48, seed: int = 0):
    """ComfyUI's ClipVisionModel (siglip_vision_model) with random weights in the HF layout."""
    import comfy.clip_vision

    path = Path(folder) / f"tiny_siglip_{hidden}.json"
    path.write_text(json.dumps(siglip_config(hidden)))
    model = comfy.clip_vision.ClipVisionModel(str(path))
    sd = {}
    for key, value in model.get_sd().items():
        gen = torch.Generator().manual_seed(key_seed(seed, key))
        noise = torch.randn(value.shape, generator=gen)
        if value.ndim == 1 and "norm" in key and key.endswith("weight"):
            sd[key] = 1.0 + 0.1 * noise
        elif value.ndim >= 2:
            sd[key] = noise / math.sqrt(value[0].numel())
        else:
            sd[key] = 0.02 * noise
    missing, unexpected = model.load_sd(sd)
    if missing or unexpected:
        raise RuntimeError(f"tiny SigLIP keys: missing {missing}, unexpected {unexpected}")
    return model


def tiny_comfy_flux():
    """A ModelPatcher around a tiny ComfyUI Flux (1 double + 1 single block): a model with no joint blocks."""
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.Flux({
        "image_model": "flux", "guidance_embed": True, "in_channels": 16, "out_channels": 16, "patch_size": 2,
        "vec_in_dim": 32, "context_in_dim": 32, "hidden_size": 128, "mlp_ratio": 4.0, "num_heads": 2, "depth": 1,
        "depth_single_blocks": 1, "axes_dim": [16, 24, 24], "theta": 10000, "qkv_bias": True, "txt_ids_dims": [],
    })
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({}, "", device=torch.device("cpu"))
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
