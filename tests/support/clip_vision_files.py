"""Random-weight CLIP vision towers in the two file layouts ComfyUI's loader accepts.

Why: IP-Adapter tests need a CLIP vision model that ComfyUI itself loads (through
`comfy.clip_vision.load`, the path users take), without shipping 2.5 GB of real
weights. Two layouts exist in the wild:

* HF transformers (`vision_model.embeddings.*`, `vision_model.encoder.layers.N.*`,
  `vision_model.pre_layrnorm.*` (sic), `vision_model.post_layernorm.*`,
  `visual_projection.weight`), e.g. the `image_encoder/model.safetensors` that users
  rename to `CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors`;
* OpenCLIP (`visual.class_embedding`, `visual.conv1.weight`,
  `visual.transformer.resblocks.N.attn.in_proj_weight`, ..., `visual.proj`), which
  ComfyUI converts to the HF names on load (q/k/v split from `in_proj`, `proj`
  transposed).

For one seed both writers hold the same weights, so both files load to identical
models. Values depend only on (seed, key), are generated one tensor at a time and
streamed to disk, so writing full ViT-H (632M parameters) never holds more than one
tensor in memory. Residual-branch outputs are scaled by 1/sqrt(2 * layers) so the
residual stream, and therefore fp16 activations, stay O(1) through all 32 layers.

ComfyUI picks a config from the layer count (a `layers.30` key means ViT-H, `layers.47`
ViT-bigG, `layers.22` ViT-L); a tiny tower is not recognised by `comfy.clip_vision.load`,
so tests build `ClipVisionModel(<json from tiny_clip_vision_config>)` and `load_sd` it.
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .checkpoints import key_seed

#: The ViT-H/14 facts (same schema as ComfyUI's `comfy/clip_vision_config_h.json`).
VIT_H_CONFIG: dict[str, Any] = {
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "hidden_act": "gelu",
    "hidden_size": 1280,
    "image_size": 224,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 5120,
    "layer_norm_eps": 1e-05,
    "model_type": "clip_vision_model",
    "num_attention_heads": 16,
    "num_channels": 3,
    "num_hidden_layers": 32,
    "patch_size": 14,
    "projection_dim": 1024,
    "torch_dtype": "float32",
}

VIT_H_PARAM_COUNT = 632_076_800

_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}


def tiny_clip_vision_config(
    hidden: int = 1280,
    layers: int = 2,
    heads: int = 2,
    projection_dim: int = 1024,
    image_size: int = 224,
    patch: int = 14,
    intermediate: int = 256,
) -> dict[str, Any]:
    """A small CLIP vision config in ComfyUI's JSON schema (feed it to `ClipVisionModel`).

    The widths an adapter sees must be real, the depth need not be:
    * `projection_dim` is the width of `image_embeds` (base adapters): 1024 for ViT-H
      adapters, 1280 for the ViT-bigG ones (`ip-adapter_sdxl`, `..._sd15_vit-G`).
    * `hidden` is the width of `penultimate_hidden_states` (plus / plus-face /
      full-face adapters, whose input is 1280 = ViT-H's hidden size). The default
      1280 therefore works with every ViT-H adapter; with a narrow `intermediate`
      the 2-layer tower is still only ~15M parameters. Use e.g. `hidden=64` for
      base-adapter-only tests.
    * `image_size=224, patch=14` give 257 tokens, what full-face expects.
    Keep `layers >= 2`: the penultimate layer must exist.
    """
    if layers < 2:
        raise ValueError("layers must be >= 2 so a penultimate hidden state exists")
    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
    return {
        **VIT_H_CONFIG,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "projection_dim": projection_dim,
        "image_size": image_size,
        "patch_size": patch,
    }


def save_clip_vision_config(config: dict[str, Any], path: str | Path) -> Path:
    """Write `config` as the JSON file `comfy.clip_vision.ClipVisionModel` reads."""
    path = Path(path)
    path.write_text(json.dumps(config, indent=2))
    return path


# ---- the HF layout, as (key, shape, init kind) --------------------------------------

_Entry = tuple[str, tuple[int, ...], str]


def _layer_prefix(i: int) -> str:
    return f"vision_model.encoder.layers.{i}."


def _layer_spec(i: int, d: int, ff: int) -> list[_Entry]:
    p = _layer_prefix(i)
    entries: list[_Entry] = [(p + "layer_norm1.weight", (d,), "lnw"), (p + "layer_norm1.bias", (d,), "lnb")]
    for name in ("q_proj", "k_proj", "v_proj"):
        entries += [(f"{p}self_attn.{name}.weight", (d, d), "w"), (f"{p}self_attn.{name}.bias", (d,), "b")]
    entries += [
        (p + "self_attn.out_proj.weight", (d, d), "wres"),
        (p + "self_attn.out_proj.bias", (d,), "b"),
        (p + "layer_norm2.weight", (d,), "lnw"),
        (p + "layer_norm2.bias", (d,), "lnb"),
        (p + "mlp.fc1.weight", (ff, d), "w"),
        (p + "mlp.fc1.bias", (ff,), "b"),
        (p + "mlp.fc2.weight", (d, ff), "wres"),
        (p + "mlp.fc2.bias", (d,), "b"),
    ]
    return entries


def _hf_spec(config: dict[str, Any]) -> list[_Entry]:
    """Every HF-layout key of a CLIP vision tower with projection, in a stable order."""
    d, ff = config["hidden_size"], config["intermediate_size"]
    patch, channels = config["patch_size"], config["num_channels"]
    positions = (config["image_size"] // patch) ** 2 + 1  # patches + class token
    e = "vision_model."
    spec: list[_Entry] = [
        (e + "embeddings.class_embedding", (d,), "cls"),
        (e + "embeddings.patch_embedding.weight", (d, channels, patch, patch), "w"),
        (e + "embeddings.position_embedding.weight", (positions, d), "pos"),
        (e + "pre_layrnorm.weight", (d,), "lnw"),
        (e + "pre_layrnorm.bias", (d,), "lnb"),
    ]
    for i in range(config["num_hidden_layers"]):
        spec += _layer_spec(i, d, ff)
    spec += [
        (e + "post_layernorm.weight", (d,), "lnw"),
        (e + "post_layernorm.bias", (d,), "lnb"),
        ("visual_projection.weight", (config["projection_dim"], d), "w"),
    ]
    return spec


def _init(shape: tuple[int, ...], kind: str, seed: int, layers: int) -> torch.Tensor:
    """One fp32 tensor; scales keep the pre-LN residual stream O(1) over `layers` blocks."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    if kind in ("w", "wres"):
        fan_in = 1
        for dim in shape[1:]:
            fan_in *= dim
        scale = fan_in**-0.5
        if kind == "wres":
            scale *= (2 * layers) ** -0.5
        return x.mul_(scale)
    scales = {"b": 0.02, "lnb": 0.05, "cls": 0.5, "pos": 0.1}
    if kind == "lnw":
        return x.mul_(0.05).add_(1.0)
    return x.mul_(scales[kind])


def _hf_tensors(config: dict[str, Any], seed: int, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    layers = config["num_hidden_layers"]
    for key, shape, kind in _hf_spec(config):
        yield key, _init(shape, kind, key_seed(seed, key), layers).to(dtype)


def clip_vision_state_dict(
    config: dict[str, Any], seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """The HF-layout state dict for `config` (in memory: use for small configs)."""
    return dict(_hf_tensors(config, seed, dtype))


def tiny_clip_vision_state_dict(
    config: dict[str, Any] | None = None, seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """HF-layout weights for `tiny_clip_vision_config(...)` (default config if None)."""
    return clip_vision_state_dict(config or tiny_clip_vision_config(), seed, dtype)


# ---- OpenCLIP layout -----------------------------------------------------------------

_OPENCLIP_RENAMES = {
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
}
_OPENCLIP_BLOCK_RENAMES = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def _openclip_plan(config: dict[str, Any]) -> list[tuple[str, tuple[int, ...], list[str], str]]:
    """OpenCLIP key, shape, the HF keys it is made of, and how ("same", "cat" or "t").

    ComfyUI's converter undoes exactly this: it splits `in_proj_*` into thirds (q, k,
    v) and transposes `proj`, so the fused/transposed files load to the same model.
    """
    plan: list[tuple[str, tuple[int, ...], list[str], str]] = []
    for key, shape, _ in _hf_spec(config):
        if key in _OPENCLIP_RENAMES:
            plan.append((_OPENCLIP_RENAMES[key], shape, [key], "same"))
        elif key == "visual_projection.weight":
            plan.append(("visual.proj", (shape[1], shape[0]), [key], "t"))  # x @ proj
        else:
            layer, rest = key[len("vision_model.encoder.layers."):].split(".", 1)
            block = f"visual.transformer.resblocks.{layer}."
            module, param = rest.rsplit(".", 1)
            if module == "self_attn.v_proj":
                parts = [f"{_layer_prefix(int(layer))}self_attn.{n}_proj.{param}" for n in "qkv"]
                plan.append((f"{block}attn.in_proj_{param}", (3 * shape[0], *shape[1:]), parts, "cat"))
            elif module not in ("self_attn.q_proj", "self_attn.k_proj"):
                plan.append((f"{block}{_OPENCLIP_BLOCK_RENAMES[module]}.{param}", shape, [key], "same"))
    return plan


def _openclip_tensors(
    config: dict[str, Any], seed: int, dtype: torch.dtype
) -> Iterator[tuple[str, torch.Tensor]]:
    """The HF tensors (same seeds, same values) under OpenCLIP's keys."""
    spec = {k: (shape, kind) for k, shape, kind in _hf_spec(config)}
    layers = config["num_hidden_layers"]
    for key, _, sources, how in _openclip_plan(config):
        parts = [_init(*spec[s], key_seed(seed, s), layers).to(dtype) for s in sources]
        if how == "cat":
            yield key, torch.cat(parts, dim=0)
        elif how == "t":
            yield key, parts[0].t().contiguous()
        else:
            yield key, parts[0]


def openclip_state_dict(
    config: dict[str, Any], seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """The OpenCLIP-layout state dict for `config`, same weights as `clip_vision_state_dict`."""
    return dict(_openclip_tensors(config, seed, dtype))


def clip_vision_shapes(config: dict[str, Any], layout: str = "hf") -> dict[str, tuple[int, ...]]:
    """Key -> shape of a tower in layout "hf" or "openclip", without allocating weights."""
    if layout == "hf":
        return {k: s for k, s, _ in _hf_spec(config)}
    if layout == "openclip":
        return {k: s for k, s, _, _ in _openclip_plan(config)}
    raise ValueError(f"unknown layout {layout!r}; expected 'hf' or 'openclip'")


# ---- streaming safetensors writer ----------------------------------------------------


def _write_streaming_safetensors(
    path: Path, shapes: list[tuple[str, tuple[int, ...]]], dtype: torch.dtype,
    tensors: Iterator[tuple[str, torch.Tensor]],
) -> None:
    """Write a .safetensors file one tensor at a time (peak memory: one tensor).

    Format: u64 little-endian header length, JSON header (key -> dtype, shape,
    data_offsets), then the raw little-endian bytes of each tensor, back to back.
    The header is built from the shapes first; each tensor is checked against it.
    """
    if sys.byteorder != "little":
        raise RuntimeError("this writer assumes a little-endian host")
    itemsize = torch.empty((), dtype=dtype).element_size()
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, shape in shapes:
        n = itemsize
        for dim in shape:
            n *= dim
        header[key] = {"dtype": _ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data section starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for (key, shape), (got_key, tensor) in zip(shapes, tensors, strict=True):
            if key != got_key or tuple(tensor.shape) != shape:
                raise AssertionError(f"writer out of sync at {key} {shape} vs {got_key} {tuple(tensor.shape)}")
            f.write(tensor.contiguous().view(torch.uint8).numpy().data)


def write_clip_vision(
    path: str | Path, config: dict[str, Any], seed: int = 0,
    dtype: torch.dtype = torch.float16, layout: str = "hf",
) -> Path:
    """Write a random CLIP vision tower for `config` in layout "hf" or "openclip"."""
    path = Path(path)
    shapes = list(clip_vision_shapes(config, layout).items())
    if layout == "hf":
        tensors = _hf_tensors(config, seed, dtype)
    else:
        tensors = _openclip_tensors(config, seed, dtype)
    _write_streaming_safetensors(path, shapes, dtype, tensors)
    return path


def write_clip_vision_vit_h(path: str | Path, seed: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    """Random ViT-H/14 with the real shapes in HF layout (~1.26 GB in fp16).

    `comfy.clip_vision.load` recognises it as ViT-H (it has `encoder.layers.30`).
    """
    return write_clip_vision(path, VIT_H_CONFIG, seed, dtype, layout="hf")


def write_clip_vision_openclip_vit_h(path: str | Path, seed: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    """The same weights as `write_clip_vision_vit_h(path, seed, dtype)` in OpenCLIP layout."""
    return write_clip_vision(path, VIT_H_CONFIG, seed, dtype, layout="openclip")
