"""The InstantX SD3.5 IP-Adapter file layout: detection from keys and shapes alone.

Published layout (`ip-adapter.bin`, nested `image_proj` / `ip_adapter` dicts;
flattened by `state_dict.flatten`):

* `image_proj.latents [1, Q, D]`, `proj_in [D, E]`, `proj_out [C, D]`, `norm_out [C]`,
  `time_embedding.linear_1 [D, T]`, `.linear_2 [D, D]`, and per resampler layer `i`:
  `layers.i.0.{norm1, norm2, to_q, to_kv, to_out}` (attention), `layers.i.1.{0, 1, 3}`
  (LayerNorm, Linear, -, Linear: the feed-forward), `layers.i.2.1 [4D, D]` (adaLN).
* per joint block `b`: `ip_adapter.b.norm_ip.linear [2C, D]` (+ bias),
  `to_k_ip` / `to_v_ip [H, C]`, `norm_q` / `norm_k` / `norm_ip_k [head_dim]`.

E = 1152 (SigLIP so400m width), D = 1280, Q = 64, C = H = 2432 (the MMDiT width),
T = 320. Every dimension is read from the tensors here; nothing is hard-coded
but the resampler's head width (64, as in diffusers' loader).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from ..errors import AdapterFormatError
from ..spec import AdapterSpec, BaseModel, EncoderFeature, ProjectionKind

#: Head width of the resampler's attention (diffusers' loader fixes it at 64 too).
RESAMPLER_HEAD_DIM = 64
#: The encoder the InstantX adapter was trained with, and the file users load.
SIGLIP_NAME = "SigLIP so400m-patch14-384"
SIGLIP_FILE = "sigclip_vision_patch14_384.safetensors"

_BLOCK_KEY = re.compile(r"^ip_adapter\.(\d+)\.(.+)$")
_BLOCK_PARTS = ("norm_ip.linear.weight", "norm_ip.linear.bias", "to_k_ip.weight", "to_v_ip.weight",
                "norm_q.weight", "norm_k.weight", "norm_ip_k.weight")
_MAX_LISTED = 8


@dataclass(frozen=True)
class SD3AdapterShape:
    """The dimensions of one SD3.5 adapter file, all read from its tensors.

    Attributes:
        clip_dim: width of the SigLIP hidden states the resampler reads (1152).
        resampler_dim: the resampler's inner width, also the time embedding's (1280).
        depth: resampler layers (4). heads: resampler heads (20).
        tokens: image tokens per reference image (64, the learned latents).
        token_dim: width of the tokens (2432); `to_k_ip` input.
        hidden_size: the MMDiT width the adapter's K/V project to (2432).
        head_dim: the MMDiT head width (64, from `norm_q`). blocks: joint blocks (38).
        timestep_dim: sinusoidal timestep features (320).
        ff_inner: the resampler feed-forward's inner width (5120).
    """

    clip_dim: int
    resampler_dim: int
    depth: int
    heads: int
    tokens: int
    token_dim: int
    hidden_size: int
    head_dim: int
    blocks: int
    timestep_dim: int
    ff_inner: int

    @property
    def model_heads(self) -> int:
        return self.hidden_size // self.head_dim

    #: For messages and the UI (the family, as `AdapterSpec` has for the UNet ones).
    family = "SD3.5"
    variant = "InstantX"
    encoder = SIGLIP_NAME

    def describe(self) -> str:
        """One line for logs and the UI, e.g. 'SD3.5 InstantX (64 tokens, SigLIP so400m-patch14-384, 38 blocks)'."""
        return f"{self.family} {self.variant} ({self.tokens} tokens, {self.encoder}, {self.blocks} joint blocks)"


def spec_of(shape: SD3AdapterShape) -> AdapterSpec:
    """The family-neutral `AdapterSpec` of an SD3.5 adapter (base SD3.5, so the MMDiT family)."""
    return AdapterSpec(base=BaseModel.SD35, projection=ProjectionKind.TIME_RESAMPLER,
                       feature=EncoderFeature.PENULTIMATE, clip_dim=shape.clip_dim, cross_attention_dim=shape.token_dim,
                       tokens=shape.tokens, layer_indices=tuple(range(shape.blocks)),
                       layer_widths=(shape.hidden_size,) * shape.blocks, variant="InstantX")


def looks_like_sd3(sd: Mapping[str, Tensor]) -> bool:
    """True when the keys are the InstantX SD3.5 layout (a time-conditioned projection or norm_ip)."""
    return any(k.startswith("image_proj.time_embedding.") or (".norm_ip." in k and k.startswith("ip_adapter."))
               for k in sd)


def _names(keys: set[str] | list[str]) -> str:
    keys = sorted(keys)
    listed = ", ".join(keys[:_MAX_LISTED])
    return listed + (f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else "")


def resampler_keys(depth: int) -> set[str]:
    """Every `image_proj.*` key (without the prefix) of a resampler with `depth` layers."""
    keys = {"latents", "proj_in.weight", "proj_in.bias", "proj_out.weight", "proj_out.bias", "norm_out.weight",
            "norm_out.bias", "time_embedding.linear_1.weight", "time_embedding.linear_1.bias",
            "time_embedding.linear_2.weight", "time_embedding.linear_2.bias"}
    for i in range(depth):
        keys |= {f"layers.{i}.0.{n}" for n in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias",
                                                "to_q.weight", "to_kv.weight", "to_out.weight")}
        keys |= {f"layers.{i}.1.{n}" for n in ("0.weight", "0.bias", "1.weight", "3.weight")}
        keys |= {f"layers.{i}.2.1.weight", f"layers.{i}.2.1.bias"}
    return keys


def _shape(sd: Mapping[str, Tensor], key: str, ndim: int, source: str) -> tuple[int, ...]:
    tensor = sd.get(key)
    if tensor is None:
        raise AdapterFormatError(f"'{source}' is missing {key} (an SD3.5 IP-Adapter has it).")
    if tensor.ndim != ndim:
        raise AdapterFormatError(f"'{source}': {key} has shape {tuple(tensor.shape)}; expected {ndim} dimensions.")
    return tuple(int(n) for n in tensor.shape)


def detect_sd3(sd: Mapping[str, Tensor], source: str = "checkpoint") -> SD3AdapterShape:
    """Read every dimension from the tensors; reject unknown, missing and inconsistent keys by name."""
    foreign = {k for k in sd if not k.startswith(("image_proj.", "ip_adapter."))}
    if foreign:
        raise AdapterFormatError(f"'{source}' has keys outside image_proj.* and ip_adapter.*: {_names(foreign)}.")
    proj = {k[len("image_proj."):]: v for k, v in sd.items() if k.startswith("image_proj.")}
    _, tokens, dim = _shape(proj, "latents", 3, source)
    depth = len({k.split(".")[1] for k in proj if k.startswith("layers.")})
    expected = resampler_keys(depth)
    unknown, missing = set(proj) - expected, expected - set(proj)
    if unknown or missing or depth == 0:
        raise AdapterFormatError(
            f"'{source}' does not match the SD3.5 time-conditioned resampler: unknown keys "
            f"{_names({'image_proj.' + k for k in unknown}) or 'none'}; missing keys "
            f"{_names({'image_proj.' + k for k in missing}) or 'none'}."
        )
    _, clip_dim = _shape(proj, "proj_in.weight", 2, source)
    token_dim, _ = _shape(proj, "proj_out.weight", 2, source)
    time_out, timestep_dim = _shape(proj, "time_embedding.linear_1.weight", 2, source)
    inner, _ = _shape(proj, "layers.0.0.to_q.weight", 2, source)
    ff_inner, _ = _shape(proj, "layers.0.1.1.weight", 2, source)
    if time_out != dim or inner % RESAMPLER_HEAD_DIM:
        raise AdapterFormatError(
            f"'{source}': the resampler is {dim} wide but its time embedding is {time_out} wide, or its "
            f"attention width {inner} is not a multiple of {RESAMPLER_HEAD_DIM}; the file is damaged."
        )
    blocks = _blocks(sd, source)
    hidden, head_dim, emb = _block_dims(blocks, token_dim, dim, source)
    return SD3AdapterShape(clip_dim=clip_dim, resampler_dim=dim, depth=depth, heads=inner // RESAMPLER_HEAD_DIM,
                           tokens=tokens, token_dim=token_dim, hidden_size=hidden, head_dim=head_dim,
                           blocks=len(blocks), timestep_dim=timestep_dim, ff_inner=ff_inner)


def _blocks(sd: Mapping[str, Tensor], source: str) -> dict[int, dict[str, Tensor]]:
    found: dict[int, dict[str, Tensor]] = {}
    unknown = []
    for key, tensor in sd.items():
        if not key.startswith("ip_adapter."):
            continue
        match = _BLOCK_KEY.match(key)
        if match is None or match.group(2) not in _BLOCK_PARTS:
            unknown.append(key)
            continue
        found.setdefault(int(match.group(1)), {})[match.group(2)] = tensor
    if unknown:
        raise AdapterFormatError(f"'{source}' has ip_adapter keys the SD3.5 adapter does not have: {_names(unknown)}.")
    if not found or sorted(found) != list(range(len(found))):
        raise AdapterFormatError(
            f"'{source}': the SD3.5 adapter's ip_adapter blocks must be numbered 0..n-1, found {sorted(found)[:12]}."
        )
    for index, parts in found.items():
        missing = [f"ip_adapter.{index}.{p}" for p in _BLOCK_PARTS if p not in parts]
        if missing:
            raise AdapterFormatError(f"'{source}' is missing {_names(missing)}.")
    return found


def _block_dims(blocks: dict[int, dict[str, Tensor]], token_dim: int, time_dim: int,
                source: str) -> tuple[int, int, int]:
    """(hidden size, head width, time width), the same in every block or an error naming the block."""
    first = blocks[0]
    hidden = int(first["to_k_ip.weight"].shape[0])
    head_dim = int(first["norm_q.weight"].shape[0])
    want = {"norm_ip.linear.weight": (2 * token_dim, time_dim), "norm_ip.linear.bias": (2 * token_dim,),
            "to_k_ip.weight": (hidden, token_dim), "to_v_ip.weight": (hidden, token_dim),
            "norm_q.weight": (head_dim,), "norm_k.weight": (head_dim,), "norm_ip_k.weight": (head_dim,)}
    for index, parts in blocks.items():
        for part, shape in want.items():
            if tuple(parts[part].shape) != shape:
                raise AdapterFormatError(
                    f"'{source}': ip_adapter.{index}.{part} has shape {tuple(parts[part].shape)}; expected {shape} "
                    f"(tokens {token_dim} wide, time embedding {time_dim}, MMDiT width {hidden}, head {head_dim})."
                )
    if head_dim == 0 or hidden % head_dim:
        raise AdapterFormatError(f"'{source}': MMDiT width {hidden} is not a multiple of the head width {head_dim}.")
    return hidden, head_dim, time_dim
