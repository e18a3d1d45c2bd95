"""Random-weight IP-Adapter checkpoints in the published key layouts.

Why: the real checkpoints are 20M-700M parameters and cannot live in a test suite,
but the loader must be tested against their exact keys and shapes. These builders
write the same keys (`image_proj.*`, `ip_adapter.N.to_k_ip.weight`, ...) in the same
two container formats the authors published (flat `.safetensors`, nested `.bin`).

`size="full"` reproduces the published shapes exactly. `size="small"` keeps every key
and every dimension that touches CLIP or the text context (1024/1280 inputs,
768/2048 context width) but scales UNet attention widths 320/640/1280 to 32/64/128
(the tiny test UNets use `model_channels=32`) and shrinks the Resampler's internal
width to 128 (2 heads of 64), so files stay a few MB.

Weights are deterministic per (seed, key): each tensor has its own generator, so a
subset or a reordering of keys never changes the values of the others. Scales keep
outputs O(1): linear weights ~ N(0, 1/fan_in), small biases, LayerNorm weights near 1.

This module encodes the published formats independently of `ip_adapter/` on purpose:
tests built on it check the pack against the files, not against itself.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

VARIANTS: tuple[str, ...] = (
    "ip-adapter_sd15",
    "ip-adapter_sd15_light",
    "ip-adapter_sd15_light_v11",
    "ip-adapter_sd15_vit-G",
    "ip-adapter-plus_sd15",
    "ip-adapter-plus-face_sd15",
    "ip-adapter-full-face_sd15",
    "ip-adapter_sdxl",
    "ip-adapter_sdxl_vit-h",
    "ip-adapter-plus_sdxl_vit-h",
    "ip-adapter-plus-face_sdxl_vit-h",
)

SIZES: tuple[str, ...] = ("small", "full")

# name -> (base, projection kind, CLIP feature width, CLIP tower)
_TABLE: dict[str, tuple[str, str, int, str]] = {
    "ip-adapter_sd15": ("sd15", "linear", 1024, "ViT-H/14"),
    "ip-adapter_sd15_light": ("sd15", "linear", 1024, "ViT-H/14"),
    "ip-adapter_sd15_light_v11": ("sd15", "linear", 1024, "ViT-H/14"),
    "ip-adapter_sd15_vit-G": ("sd15", "linear", 1280, "ViT-bigG/14"),
    "ip-adapter-plus_sd15": ("sd15", "resampler", 1280, "ViT-H/14"),
    "ip-adapter-plus-face_sd15": ("sd15", "resampler", 1280, "ViT-H/14"),
    "ip-adapter-full-face_sd15": ("sd15", "mlp", 1280, "ViT-H/14"),
    "ip-adapter_sdxl": ("sdxl", "linear", 1280, "ViT-bigG/14"),
    "ip-adapter_sdxl_vit-h": ("sdxl", "linear", 1024, "ViT-H/14"),
    "ip-adapter-plus_sdxl_vit-h": ("sdxl", "resampler", 1280, "ViT-H/14"),
    "ip-adapter-plus-face_sdxl_vit-h": ("sdxl", "resampler", 1280, "ViT-H/14"),
}

CROSS_ATTENTION_DIM: dict[str, int] = {"sd15": 768, "sdxl": 2048}

_BASE_TOKENS = 4  # ImageProjModel: proj rows = 4 * cross_attention_dim
_RESAMPLER_QUERIES = 16
_RESAMPLER_DEPTH = 4
_RESAMPLER_DIM_HEAD = 64
_FF_MULT = 4
_FULL_FACE_TOKENS = 257  # MLPProjModel maps each of ViT-H's 257 penultimate tokens
_SMALL_WIDTH = {320: 32, 640: 64, 1280: 128}
_SMALL_RESAMPLER_DIM = 128


def _sd15_width(n: int) -> int:
    if n in (1, 3, 25, 27, 29):
        return 320
    if n in (5, 7, 19, 21, 23):
        return 640
    return 1280  # 9..17 and 31 (the middle block)


def _sdxl_width(n: int) -> int:
    if n <= 7 or 109 <= n <= 119:
        return 640
    return 1280  # 9..107 (down/up 1280 blocks) and 121..139 (middle block)


def layer_widths(base: str, size: str = "full") -> dict[int, int]:
    """Checkpoint index N -> K/V width of `ip_adapter.N.to_{k,v}_ip` (diffusers order)."""
    _check_size(size)
    if base == "sd15":
        widths = {n: _sd15_width(n) for n in range(1, 32, 2)}
    elif base == "sdxl":
        widths = {n: _sdxl_width(n) for n in range(1, 140, 2)}
    else:
        raise ValueError(f"unknown base {base!r}; expected 'sd15' or 'sdxl'")
    if size == "small":
        widths = {n: _SMALL_WIDTH[w] for n, w in widths.items()}
    return widths


def _check_variant(variant: str) -> None:
    if variant not in _TABLE:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")


def _check_size(size: str) -> None:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")


def _resampler_dims(base: str, size: str) -> tuple[int, int]:
    """(internal dim, heads) of the Perceiver Resampler."""
    if size == "small":
        dim = _SMALL_RESAMPLER_DIM
    else:
        dim = CROSS_ATTENTION_DIM["sd15"] if base == "sd15" else 1280
    return dim, dim // _RESAMPLER_DIM_HEAD


# Each entry: key -> (shape, init kind). Kinds: "w" linear weight, "b" bias,
# "lnw"/"lnb" LayerNorm weight/bias, "lat" resampler latents.
_Spec = dict[str, tuple[tuple[int, ...], str]]


def _image_proj_spec(variant: str, size: str) -> _Spec:
    base, kind, clip_dim, _ = _TABLE[variant]
    ctx = CROSS_ATTENTION_DIM[base]
    p = "image_proj."
    if kind == "linear":
        rows = _BASE_TOKENS * ctx
        return {
            p + "proj.weight": ((rows, clip_dim), "w"),
            p + "proj.bias": ((rows,), "b"),
            p + "norm.weight": ((ctx,), "lnw"),
            p + "norm.bias": ((ctx,), "lnb"),
        }
    if kind == "mlp":
        return {
            p + "proj.0.weight": ((clip_dim, clip_dim), "w"),
            p + "proj.0.bias": ((clip_dim,), "b"),
            p + "proj.2.weight": ((ctx, clip_dim), "w"),
            p + "proj.2.bias": ((ctx,), "b"),
            p + "proj.3.weight": ((ctx,), "lnw"),
            p + "proj.3.bias": ((ctx,), "lnb"),
        }
    dim, heads = _resampler_dims(base, size)
    inner = heads * _RESAMPLER_DIM_HEAD
    spec: _Spec = {
        p + "latents": ((1, _RESAMPLER_QUERIES, dim), "lat"),
        p + "proj_in.weight": ((dim, clip_dim), "w"),
        p + "proj_in.bias": ((dim,), "b"),
        p + "proj_out.weight": ((ctx, dim), "w"),
        p + "proj_out.bias": ((ctx,), "b"),
        p + "norm_out.weight": ((ctx,), "lnw"),
        p + "norm_out.bias": ((ctx,), "lnb"),
    }
    for i in range(_RESAMPLER_DEPTH):
        a, f = f"{p}layers.{i}.0.", f"{p}layers.{i}.1."
        spec.update({
            a + "norm1.weight": ((dim,), "lnw"),
            a + "norm1.bias": ((dim,), "lnb"),
            a + "norm2.weight": ((dim,), "lnw"),
            a + "norm2.bias": ((dim,), "lnb"),
            a + "to_q.weight": ((inner, dim), "w"),
            a + "to_kv.weight": ((2 * inner, dim), "w"),
            a + "to_out.weight": ((dim, inner), "w"),
            f + "0.weight": ((dim,), "lnw"),
            f + "0.bias": ((dim,), "lnb"),
            f + "1.weight": ((dim * _FF_MULT, dim), "w"),
            f + "3.weight": ((dim, dim * _FF_MULT), "w"),
        })
    return spec


def _spec(variant: str, size: str) -> _Spec:
    _check_variant(variant)
    _check_size(size)
    base = _TABLE[variant][0]
    ctx = CROSS_ATTENTION_DIM[base]
    spec = _image_proj_spec(variant, size)
    for n, width in layer_widths(base, size).items():
        spec[f"ip_adapter.{n}.to_k_ip.weight"] = ((width, ctx), "w")
        spec[f"ip_adapter.{n}.to_v_ip.weight"] = ((width, ctx), "w")
    return spec


def state_dict_shapes(variant: str, size: str = "full") -> dict[str, tuple[int, ...]]:
    """Flat key -> shape, without allocating any weights (cheap even for full SDXL)."""
    return {k: shape for k, (shape, _) in _spec(variant, size).items()}


def key_seed(seed: int, key: str) -> int:
    """A stable per-tensor seed, so values depend only on (seed, key), never on order."""
    return (seed * 0x1_0000_0001 + zlib.crc32(key.encode())) % (2**63 - 1)


def _init(shape: tuple[int, ...], kind: str, seed: int) -> torch.Tensor:
    """One tensor, fp32, scaled so activations stay O(1) and nothing saturates."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float32)
    if kind == "w":
        fan_in = 1
        for d in shape[1:]:
            fan_in *= d
        return x.mul_(fan_in**-0.5)
    if kind == "b":
        return x.mul_(0.02)
    if kind == "lnw":
        return x.mul_(0.1).add_(1.0)
    if kind == "lnb":
        return x.mul_(0.1)
    if kind == "lat":
        return x.mul_(0.5)
    raise ValueError(f"unknown init kind {kind!r}")


def ip_adapter_state_dict(
    variant: str, size: str = "small", seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """A flat state dict with the published keys of `variant` and random weights.

    Keys are `image_proj.*` and `ip_adapter.N.to_{k,v}_ip.weight`, as in the
    published `.safetensors` files. See the module docstring for `size`.
    """
    return {
        k: _init(shape, kind, key_seed(seed, k)).to(dtype)
        for k, (shape, kind) in _spec(variant, size).items()
    }


def state_dict_for_unet_width(
    variant: str, model_channels: int, seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """The published image projection, with K/V widths of a UNet built at `model_channels`.

    Why: benchmarks run UNets at widths between "small" and "full" (e.g. 64 or 160), and other
    IP-Adapter packs hard-code the published Resampler width, so only the per-layer K/V
    projections may follow the UNet. `model_channels=320` equals `size="full"`.
    """
    _check_variant(variant)
    base = _TABLE[variant][0]
    ctx = CROSS_ATTENTION_DIM[base]
    spec = _image_proj_spec(variant, "full")
    for n, width in layer_widths(base, "full").items():
        scaled = width * model_channels // 320
        spec[f"ip_adapter.{n}.to_k_ip.weight"] = ((scaled, ctx), "w")
        spec[f"ip_adapter.{n}.to_v_ip.weight"] = ((scaled, ctx), "w")
    return {k: _init(shape, kind, key_seed(seed, k)).to(dtype) for k, (shape, kind) in spec.items()}


def param_count(variant: str, size: str = "full") -> int:
    """Number of scalars in the checkpoint, computed from shapes only."""
    total = 0
    for shape in state_dict_shapes(variant, size).values():
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


def expected(variant: str, size: str = "full") -> dict[str, Any]:
    """Facts a correct loader must infer from `variant`'s tensors (the test oracle).

    Keys: base ("sd15"/"sdxl"), projection ("linear"/"mlp"/"resampler"), feature
    ("image_embeds"/"penultimate_hidden_states"), clip_dim, encoder, tokens,
    cross_attention_dim, layer_count, layer_indices, layer_widths, param_count, and
    for resamplers resampler_dim / resampler_heads / resampler_depth.
    """
    _check_variant(variant)
    base, kind, clip_dim, encoder = _TABLE[variant]
    widths = layer_widths(base, size)
    facts: dict[str, Any] = {
        "base": base,
        "projection": kind,
        "feature": "image_embeds" if kind == "linear" else "penultimate_hidden_states",
        "clip_dim": clip_dim,
        "encoder": encoder,
        "tokens": {"linear": _BASE_TOKENS, "resampler": _RESAMPLER_QUERIES,
                   "mlp": _FULL_FACE_TOKENS}[kind],
        "cross_attention_dim": CROSS_ATTENTION_DIM[base],
        "layer_count": len(widths),
        "layer_indices": tuple(widths),
        "layer_widths": tuple(widths.values()),
        "param_count": param_count(variant, size),
    }
    if kind == "resampler":
        dim, heads = _resampler_dims(base, size)
        facts.update(resampler_dim=dim, resampler_heads=heads, resampler_depth=_RESAMPLER_DEPTH)
    return facts


def save_safetensors(sd: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Write the flat layout (as the published `.safetensors` files)."""
    path = Path(path)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def nest(sd: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Flat keys -> `{"image_proj": {...}, "ip_adapter": {"1.to_k_ip.weight": ...}}`."""
    nested: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        top, _, rest = key.partition(".")
        nested.setdefault(top, {})[rest] = value
    return nested


def save_bin(sd: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Write the nested layout with `torch.save` (as the published `.bin` files)."""
    path = Path(path)
    torch.save(nest(sd), str(path))
    return path


# ---- bad inputs ---------------------------------------------------------------------


def write_truncated_safetensors(
    path: str | Path, variant: str = "ip-adapter_sd15", size: str = "small", seed: int = 0
) -> Path:
    """A valid checkpoint cut in half: a real-world interrupted download."""
    path = save_safetensors(ip_adapter_state_dict(variant, size, seed), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def state_dict_with_unknown_key(
    variant: str,
    key: str = "image_proj.unexpected_extra.weight",
    size: str = "small",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A valid state dict plus one key no published layout has (must be rejected by name)."""
    sd = ip_adapter_state_dict(variant, size, seed)
    sd[key] = torch.zeros(4, 4)
    return sd


def state_dict_missing_key(
    variant: str, key: str | None = None, size: str = "small", seed: int = 0
) -> tuple[dict[str, torch.Tensor], str]:
    """A valid state dict minus one key (default: the last `to_v_ip`); returns (sd, key)."""
    sd = ip_adapter_state_dict(variant, size, seed)
    if key is None:
        key = [k for k in sd if k.endswith("to_v_ip.weight")][-1]
    del sd[key]
    return sd, key
