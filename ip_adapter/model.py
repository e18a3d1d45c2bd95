"""The IP-Adapter module: one projection model plus per-layer image K/V projections.

Attribute names equal checkpoint keys (`image_proj.*`, `ip_adapter.N.to_k_ip`),
so a checkpoint loads with `strict=True` and no key map; anything the module
does not have is an error with the key's name (checked before torch would).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TypeVar

import torch
from torch import Tensor, nn

from .errors import AdapterFormatError
from .projection import ImageProjModel, MLPProjModel, Resampler
from .spec import AdapterSpec, ProjectionKind
from .state_dict import detect_spec, read_file, split

M = TypeVar("M", bound=nn.Module)

_PROJECTIONS = {
    ProjectionKind.LINEAR: ImageProjModel,
    ProjectionKind.MLP: MLPProjModel,
    ProjectionKind.RESAMPLER: Resampler,
}


def load_checked(model: M, sd: Mapping[str, Tensor], source: str) -> M:
    """Load `sd` into a meta-built `model` strictly, after naming wrong shapes and non-finite values."""
    expected = model.state_dict()
    wrong = [f"{key} {tuple(sd[key].shape)} (expected {tuple(t.shape)})"
             for key, t in expected.items() if key in sd and sd[key].shape != t.shape]
    if wrong:
        raise AdapterFormatError(f"'{source}' has tensors of unexpected shape: {'; '.join(wrong[:4])}.")
    bad = [key for key, t in sd.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise AdapterFormatError(f"'{source}' has NaN or infinite values in {', '.join(bad[:4])}; download it again.")
    model.load_state_dict(dict(sd), strict=True, assign=True)
    return model.eval().requires_grad_(False)


def run_projection(projection: nn.Module, features: Tensor) -> Tensor:
    """Encoder features -> tokens, float32, computed in the weights' dtype on their device (as the reference).

    The weights' place is read from a parameter, not `.device`/`.dtype` properties:
    ComfyUI's ModelPatcher sets attributes with those names on the modules it manages.
    """
    weights = next(projection.parameters())
    return projection(features.to(device=weights.device, dtype=weights.dtype)).float()


class ImageKV(nn.Module):
    """`K_img = c W'_k`, `V_img = c W'_v` for one cross-attention layer (no bias)."""

    def __init__(self, cross_attention_dim: int, width: int) -> None:
        super().__init__()
        self.to_k_ip = nn.Linear(cross_attention_dim, width, bias=False)
        self.to_v_ip = nn.Linear(cross_attention_dim, width, bias=False)


class IPAdapterModel(nn.Module):
    """Projection model + the K/V projections of every cross-attention layer."""

    def __init__(self, spec: AdapterSpec, image_proj: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.image_proj = image_proj
        self.ip_adapter = nn.ModuleDict(
            {str(index): ImageKV(spec.cross_attention_dim, width)
             for index, width in zip(spec.layer_indices, spec.layer_widths)}
        )

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Tensor], source: str = "checkpoint") -> IPAdapterModel:
        """Build the module the keys describe and load it strictly."""
        spec = detect_spec(sd, source)
        image_proj_sd, _ = split(sd)
        with torch.device("meta"):
            model = cls(spec, _PROJECTIONS[spec.projection].from_shapes(image_proj_sd))
        return load_checked(model, sd, source)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> IPAdapterModel:
        """Read, detect and load a checkpoint; errors name the file."""
        return cls.from_state_dict(read_file(path), source=os.path.basename(os.fspath(path)))

    @torch.no_grad()
    def project(self, features: Tensor) -> Tensor:
        """CLIP features of `spec.feature` -> tokens [B, T, cross_attention_dim], float32."""
        return run_projection(self.image_proj, features)

    @torch.no_grad()
    def image_kv(self, tokens: Tensor, device: torch.device, dtype: torch.dtype) -> dict[int, tuple[Tensor, Tensor]]:
        """K and V of `tokens` [n, T, C] for every layer, computed in float32, stored in `dtype`."""
        tokens = tokens.to(device=device, dtype=torch.float32)
        result = {}
        for index, layer in self.ip_adapter.items():
            k = nn.functional.linear(tokens, layer.to_k_ip.weight.to(device=device, dtype=torch.float32))
            v = nn.functional.linear(tokens, layer.to_v_ip.weight.to(device=device, dtype=torch.float32))
            result[int(index)] = (k.to(dtype), v.to(dtype))
        return result
