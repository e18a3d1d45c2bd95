"""XLabs flux-ip-adapter checkpoints (v1: 4 tokens, v2: 16 tokens): keys, detection, the module.

Published layout (XLabs-AI/flux-ip-adapter and flux-ip-adapter-v2, one flat file):

    ip_adapter_proj_model.proj.weight   [T * C, 768]   CLIP ViT-L/14 image_embeds -> T tokens
    ip_adapter_proj_model.proj.bias     [T * C]
    ip_adapter_proj_model.norm.{weight,bias}   [C]     C = 4096 (the T5 width)
    double_blocks.{0..18}.processor.ip_adapter_double_stream_{k,v}_proj.{weight [3072, C], bias [3072]}

The projection is the IP-Adapter `ImageProjModel` (Linear, reshape, LayerNorm).
Unlike the UNet adapters, the K/V projections have a bias. The variant is read
from shapes: T = rows of `proj.weight` / C (diffusers tells v2 from v1 by
`proj.weight` having 65536 = 16 x 4096 rows, the same rule at full size).
Attribute names of `XLabsFluxAdapter` equal the keys, so it loads strictly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .. import layout
from ..errors import AdapterFormatError
from ..model import load_checked, run_projection
from ..projection import ImageProjModel
from ..spec import AdapterSpec, BaseModel, EncoderFeature, ProjectionKind

PROJ_PREFIX = "ip_adapter_proj_model."
BLOCK_PREFIX = "double_blocks."
_PROJ_KEYS = {"proj.weight", "proj.bias", "norm.weight", "norm.bias"}
_BLOCK_KEY = re.compile(r"^double_blocks\.(\d+)\.processor\.ip_adapter_double_stream_([kv])_proj\.(weight|bias)$")
_VARIANTS = {4: "XLabs v1", 16: "XLabs v2"}
_MAX_LISTED = 6


def claims(sd: Mapping[str, Tensor]) -> bool:
    """True for files in the XLabs layout (from key prefixes only; `detect` checks the rest)."""
    return any(key.startswith((PROJ_PREFIX, BLOCK_PREFIX)) for key in sd)


def _names(keys: list[str] | set[str]) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def detect(sd: Mapping[str, Tensor], source: str = "checkpoint") -> AdapterSpec:
    """The spec of an XLabs Flux adapter; unknown, missing or mis-shaped keys are named."""
    proj = {k[len(PROJ_PREFIX):]: v for k, v in sd.items() if k.startswith(PROJ_PREFIX)}
    blocks: dict[int, dict[str, Tensor]] = {}
    unknown = [f"{PROJ_PREFIX}{k}" for k in set(proj) - _PROJ_KEYS]
    for key, tensor in sd.items():
        if key.startswith(PROJ_PREFIX):
            continue
        match = _BLOCK_KEY.match(key)
        if match is None:
            unknown.append(key)
            continue
        blocks.setdefault(int(match.group(1)), {})[f"{match.group(2)}.{match.group(3)}"] = tensor
    if unknown:
        raise AdapterFormatError(
            f"'{source}' looks like an XLabs Flux IP-Adapter but has keys that layout does not have: "
            f"{_names(unknown)}. Only ip_adapter_proj_model.* and double_blocks.N.processor."
            "ip_adapter_double_stream_{k,v}_proj.* are expected."
        )
    missing = [f"{PROJ_PREFIX}{k}" for k in _PROJ_KEYS - set(proj)]
    expected_blocks = tuple(range(layout.FLUX_DOUBLE_BLOCKS))
    if tuple(sorted(blocks)) != expected_blocks:
        raise AdapterFormatError(
            f"'{source}' has double_blocks {sorted(blocks)[:_MAX_LISTED]}... ({len(blocks)} blocks); an XLabs Flux "
            f"adapter has exactly the {layout.FLUX_DOUBLE_BLOCKS} double blocks 0..18 of Flux dev/schnell."
        )
    for index, parts in sorted(blocks.items()):
        missing += [f"double_blocks.{index}.processor.ip_adapter_double_stream_{p[0]}_proj.{p[2:]}"
                    for p in ("k.weight", "k.bias", "v.weight", "v.bias") if p not in parts]
    if missing:
        raise AdapterFormatError(f"'{source}' is missing {_names(missing)}; the file is incomplete, download it again.")

    width = int(proj["norm.weight"].shape[0])
    rows, clip_dim = (int(n) for n in proj["proj.weight"].shape)
    if rows % width:
        raise AdapterFormatError(
            f"'{source}': ip_adapter_proj_model.proj.weight has {rows} rows, not a multiple of the {width}-wide "
            "norm; the file is damaged."
        )
    hidden = {int(parts["k.weight"].shape[0]) for parts in blocks.values()}
    context = {int(parts[f"{kv}.weight"].shape[1]) for parts in blocks.values() for kv in "kv"}
    if len(hidden) != 1 or context != {width}:
        raise AdapterFormatError(
            f"'{source}': the double-block projections take {sorted(context)}-wide tokens into {sorted(hidden)} "
            f"wide attention, but the image projection makes {width}-wide tokens; the file mixes checkpoints."
        )
    tokens = rows // width
    return AdapterSpec(
        base=BaseModel.FLUX, projection=ProjectionKind.LINEAR, feature=EncoderFeature.IMAGE_EMBEDS,
        clip_dim=clip_dim, cross_attention_dim=width, tokens=tokens, layer_indices=expected_blocks,
        layer_widths=(hidden.pop(),) * len(expected_blocks), variant=_VARIANTS.get(tokens, f"XLabs {tokens}-token"),
    )


class DoubleStreamKV(nn.Module):
    """`K_img = c W_k + b_k`, `V_img = c W_v + b_v` for one double block (keys as in the file)."""

    def __init__(self, context: int, hidden: int) -> None:
        super().__init__()
        self.ip_adapter_double_stream_k_proj = nn.Linear(context, hidden)
        self.ip_adapter_double_stream_v_proj = nn.Linear(context, hidden)


class _Block(nn.Module):
    def __init__(self, context: int, hidden: int) -> None:
        super().__init__()
        self.processor = DoubleStreamKV(context, hidden)


class XLabsFluxAdapter(nn.Module):
    """The XLabs projection + the image K/V of each of the 19 double blocks."""

    def __init__(self, spec: AdapterSpec) -> None:
        super().__init__()
        self.spec = spec
        self.ip_adapter_proj_model = ImageProjModel(spec.clip_dim, spec.cross_attention_dim, spec.tokens)
        self.double_blocks = nn.ModuleDict(
            {str(i): _Block(spec.cross_attention_dim, width) for i, width in zip(spec.layer_indices, spec.layer_widths)}
        )

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Tensor], source: str = "checkpoint") -> XLabsFluxAdapter:
        spec = detect(sd, source)
        with torch.device("meta"):
            model = cls(spec)
        return load_checked(model, sd, source)

    @torch.no_grad()
    def project(self, features: Tensor) -> Tensor:
        """CLIP ViT-L/14 image_embeds [n, 768] -> tokens [n, T, C], float32."""
        return run_projection(self.ip_adapter_proj_model, features)

    @torch.no_grad()
    def image_kv(self, tokens: Tensor, device: torch.device, dtype: torch.dtype) -> dict[int, tuple[Tensor, Tensor]]:
        """K and V [n, T, hidden] of `tokens` for every double block, computed in float32, stored in `dtype`."""
        tokens = tokens.to(device=device, dtype=torch.float32)
        result = {}
        for index, block in self.double_blocks.items():
            processor: DoubleStreamKV = block.processor  # type: ignore[assignment]
            kv = []
            for linear in (processor.ip_adapter_double_stream_k_proj, processor.ip_adapter_double_stream_v_proj):
                weight = linear.weight.to(device=device, dtype=torch.float32)
                bias = linear.bias.to(device=device, dtype=torch.float32)
                kv.append(nn.functional.linear(tokens, weight, bias).to(dtype))
            result[int(index)] = (kv[0], kv[1])
        return result
