"""Reading IP-Adapter checkpoints and telling the variants apart.

Two published layouts are accepted: `.safetensors` with flat `image_proj.*` /
`ip_adapter.*` keys, and the authors' `.bin` with a nested
`{"image_proj": {...}, "ip_adapter": {...}}` dict. Pickled files are read with
`torch.load(weights_only=True)`, which refuses anything but tensors and plain
containers, so a hostile file cannot run code.

The variant is decided here, once, from keys and shapes alone (never the file
name). Keys that no known variant has, and keys a variant needs but the file
lacks, are reported by name.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from torch import Tensor

from . import layout
from .errors import AdapterFormatError
from .spec import AdapterSpec, BaseModel, EncoderFeature, ProjectionKind
from .tensor_files import read_tensor_file

_LAYER_KEY = re.compile(r"^ip_adapter\.(\d+)\.(to_k_ip|to_v_ip)\.weight$")
_CROSS_DIMS = {BaseModel.SD15: 768, BaseModel.SDXL: 2048}
_MAX_LISTED = 8


def _names(keys: list[str] | set[str]) -> str:
    keys = sorted(keys)
    listed = ", ".join(keys[:_MAX_LISTED])
    return listed + (f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else "")


def read_file(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a checkpoint into flat `image_proj.*` / `ip_adapter.*` keys.

    Raises AdapterFormatError naming the file when it is missing, truncated,
    not a tensor file, or a pickle that carries more than tensors.
    """
    name = os.path.basename(os.fspath(path))
    data = read_tensor_file(path, what="IP-Adapter file", error=AdapterFormatError,
                            safer="use the '.safetensors' release of this adapter instead.")
    return flatten(data, source=name)


def flatten(data: object, source: str = "checkpoint") -> dict[str, Tensor]:
    """Accept the nested `.bin` layout or flat keys; return flat prefixed keys."""
    if not isinstance(data, Mapping):
        raise AdapterFormatError(f"'{source}' holds a {type(data).__name__}, not a dict of tensors.")
    flat: dict[str, Tensor] = {}
    for top, value in data.items():
        if isinstance(value, Mapping) and top in ("image_proj", "ip_adapter"):
            for key, tensor in value.items():
                flat[f"{top}.{key}"] = tensor
        else:
            flat[str(top)] = value
    not_tensors = [k for k, v in flat.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise AdapterFormatError(f"'{source}' has entries that are not tensors: {_names(not_tensors)}.")
    return flat


def split(sd: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split flat keys into (image_proj without prefix, ip_adapter without prefix)."""
    image_proj = {k[len("image_proj."):]: v for k, v in sd.items() if k.startswith("image_proj.")}
    layers = {k[len("ip_adapter."):]: v for k, v in sd.items() if k.startswith("ip_adapter.")}
    return image_proj, layers


def _resampler_keys(depth: int) -> set[str]:
    keys = {"latents", "proj_in.weight", "proj_in.bias", "proj_out.weight", "proj_out.bias",
            "norm_out.weight", "norm_out.bias"}
    for i in range(depth):
        keys |= {f"layers.{i}.0.{n}" for n in ("norm1.weight", "norm1.bias", "norm2.weight",
                                                "norm2.bias", "to_q.weight", "to_kv.weight",
                                                "to_out.weight")}
        keys |= {f"layers.{i}.1.{n}" for n in ("0.weight", "0.bias", "1.weight", "3.weight")}
    return keys


def _projection(image_proj: Mapping[str, Tensor], source: str) -> tuple[ProjectionKind, set[str]]:
    """Which projection model the `image_proj.*` keys describe, and the keys it must have."""
    if "latents" in image_proj:
        depth = len({k.split(".")[1] for k in image_proj if k.startswith("layers.")})
        return ProjectionKind.RESAMPLER, _resampler_keys(depth)
    if "proj.0.weight" in image_proj:
        keys = {f"proj.{i}.{p}" for i in (0, 2, 3) for p in ("weight", "bias")}
        return ProjectionKind.MLP, keys
    if "proj.weight" in image_proj:
        return ProjectionKind.LINEAR, {"proj.weight", "proj.bias", "norm.weight", "norm.bias"}
    if not image_proj:
        raise AdapterFormatError(f"'{source}' has no image_proj.* keys: it is not an IP-Adapter checkpoint.")
    raise AdapterFormatError(
        f"'{source}' has an image projection this pack does not know (keys: {_names(set(image_proj))}). "
        "Supported: base/light/vit-G (image_proj.proj + norm), plus/plus-face (resampler), full-face (MLP)."
    )


def detect_spec(sd: Mapping[str, Tensor], source: str = "checkpoint") -> AdapterSpec:
    """Decide the variant from keys and shapes; reject unknown or missing keys by name."""
    foreign = {k for k in sd if not k.startswith(("image_proj.", "ip_adapter."))}
    if foreign:
        raise AdapterFormatError(
            f"'{source}' has keys outside image_proj.* and ip_adapter.*: {_names(foreign)}. "
            "Is this an IP-Adapter checkpoint (and not a FaceID/LoRA or a full model)?"
        )
    image_proj, layers = split(sd)
    _refuse_instantx_flux(layers, source)
    kind, proj_keys = _projection(image_proj, source)
    unknown = set(image_proj) - proj_keys
    missing = proj_keys - set(image_proj)
    if unknown or missing:
        parts = [f"unknown keys {_names({'image_proj.' + k for k in unknown})}" if unknown else "",
                 f"missing keys {_names({'image_proj.' + k for k in missing})}" if missing else ""]
        raise AdapterFormatError(
            f"'{source}' does not match the {kind.value} projection: {'; '.join(p for p in parts if p)}."
        )

    indices, widths, cross_dim = _layers(layers, source)
    base = {16: BaseModel.SD15, 70: BaseModel.SDXL}.get(len(indices))
    if base is None:
        raise AdapterFormatError(
            f"'{source}' has {len(indices)} ip_adapter layers; SD1.5 adapters have 16 and SDXL adapters 70."
        )
    expected = layout.checkpoint_indices(base)
    if tuple(indices) != expected:
        missing_layers = sorted(set(expected) - set(indices))
        extra = sorted(set(indices) - set(expected))
        raise AdapterFormatError(
            f"'{source}' has ip_adapter layer indices that do not match {base.value}: "
            f"missing {missing_layers[:_MAX_LISTED]}, unexpected {extra[:_MAX_LISTED]}."
        )
    if cross_dim != _CROSS_DIMS[base]:
        raise AdapterFormatError(
            f"'{source}' projects to {cross_dim}-wide tokens, but {base.value} text context is "
            f"{_CROSS_DIMS[base]} wide. This checkpoint is for another model family."
        )

    if kind is ProjectionKind.RESAMPLER:
        feature, clip_dim = EncoderFeature.PENULTIMATE, image_proj["proj_in.weight"].shape[1]
        tokens, out_dim, variant = image_proj["latents"].shape[1], image_proj["proj_out.weight"].shape[0], "plus"
    elif kind is ProjectionKind.MLP:
        feature, clip_dim = EncoderFeature.PENULTIMATE, image_proj["proj.0.weight"].shape[1]
        tokens, out_dim, variant = 257, image_proj["proj.2.weight"].shape[0], "full-face"
    else:
        feature, clip_dim = EncoderFeature.IMAGE_EMBEDS, image_proj["proj.weight"].shape[1]
        out_dim, variant = image_proj["norm.weight"].shape[0], "base"
        rows = image_proj["proj.weight"].shape[0]
        if rows % out_dim:
            raise AdapterFormatError(
                f"'{source}': image_proj.proj.weight has {rows} rows, not a multiple of the "
                f"{out_dim}-wide norm; the file is damaged."
            )
        tokens = rows // out_dim
    if out_dim != cross_dim:
        raise AdapterFormatError(
            f"'{source}': the image projection outputs {out_dim}-wide tokens but the "
            f"ip_adapter layers take {cross_dim}; the file mixes two checkpoints."
        )
    return AdapterSpec(base=base, projection=kind, feature=feature, clip_dim=int(clip_dim),
                       cross_attention_dim=int(cross_dim), tokens=int(tokens),
                       layer_indices=tuple(indices), layer_widths=tuple(widths), variant=variant)


#: InstantX FLUX.1-dev-IP-Adapter: ip_adapter.0..56 (19 double + 38 single blocks) in the UNet key style.
_INSTANTX_FLUX_LAYERS = 57


def _refuse_instantx_flux(layers: Mapping[str, Tensor], source: str) -> None:
    """Name InstantX's Flux adapter (same key style as the UNet files) instead of a misleading shape error.

    It needs SigLIP's attention-pooling head, which ComfyUI's CLIP vision loader does
    not build or load (README, "Flux": why it is not supported).
    """
    indices = {key.split(".")[0] for key in layers}
    if len(indices) == _INSTANTX_FLUX_LAYERS:
        raise AdapterFormatError(
            f"'{source}' looks like InstantX's FLUX.1-dev-IP-Adapter ({_INSTANTX_FLUX_LAYERS} ip_adapter layers). "
            "It is not supported: it needs SigLIP's pooled output, which ComfyUI's CLIPVisionLoader does not compute "
            "(see the README, 'Flux'). For Flux use XLabs' flux-ip-adapter or flux-ip-adapter-v2."
        )


def _layers(layers: Mapping[str, Tensor], source: str) -> tuple[list[int], list[int], int]:
    """Check `N.to_k_ip.weight` / `N.to_v_ip.weight` pairs; return indices, widths, context width."""
    found: dict[int, dict[str, Tensor]] = {}
    unknown = []
    for key, tensor in layers.items():
        match = _LAYER_KEY.match("ip_adapter." + key)
        if match is None:
            unknown.append("ip_adapter." + key)
            continue
        found.setdefault(int(match.group(1)), {})[match.group(2)] = tensor
    if unknown:
        raise AdapterFormatError(
            f"'{source}' has ip_adapter keys no supported variant has: {_names(unknown)}. "
            "(FaceID adapters, which add LoRA keys, are not supported yet.)"
        )
    if not found:
        raise AdapterFormatError(f"'{source}' has no ip_adapter.N.to_k_ip/to_v_ip weights.")
    widths, cross_dims = [], set()
    for index in sorted(found):
        pair = found[index]
        for part in ("to_k_ip", "to_v_ip"):
            if part not in pair:
                raise AdapterFormatError(f"'{source}' is missing ip_adapter.{index}.{part}.weight.")
            if pair[part].ndim != 2:
                raise AdapterFormatError(f"'{source}': ip_adapter.{index}.{part}.weight is not a matrix.")
        if pair["to_k_ip"].shape != pair["to_v_ip"].shape:
            raise AdapterFormatError(
                f"'{source}': ip_adapter.{index}.to_k_ip and to_v_ip shapes differ "
                f"({tuple(pair['to_k_ip'].shape)} vs {tuple(pair['to_v_ip'].shape)})."
            )
        widths.append(int(pair["to_k_ip"].shape[0]))
        cross_dims.add(int(pair["to_k_ip"].shape[1]))
    if len(cross_dims) != 1:
        raise AdapterFormatError(f"'{source}': ip_adapter layers disagree on the context width: {sorted(cross_dims)}.")
    return sorted(found), widths, cross_dims.pop()
