"""Model families: how an adapter reaches each kind of model (see `seam` for the interface).

| family | module | ComfyUI hook | adapters |
|---|---|---|---|
| UNet (SD1.5, SDXL) | `unet` | attn2 replace per cross-attention layer | tencent-ailab IP-Adapter |
| Flux (dev, schnell) | `flux`, `flux_format` | `patches_replace["dit"]` per double block | XLabs flux-ip-adapter v1, v2 |

`injection_for(spec)` is the only entry point the ComfyUI glue uses; a new
family adds a module and one row in `_INJECTIONS`.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..spec import AdapterSpec, ModelFamily
from .flux import FLUX
from .seam import Backends, FamilyInjection, HookPoint, check_points, make_patches
from .unet import UNET

_INJECTIONS: dict[ModelFamily, FamilyInjection] = {
    ModelFamily.UNET: UNET,
    ModelFamily.FLUX: FLUX,
}


def injection_for(spec: AdapterSpec) -> FamilyInjection:
    """The injection of the family `spec` belongs to."""
    return _INJECTIONS[spec.family]


def describe_model(found: Mapping[HookPoint, int]) -> str:
    """What a model whose points are `found` looks like to the families ('SD1.5', 'Flux', ...)."""
    for injection in _INJECTIONS.values():
        name = injection.describe_model(found)
        if name is not None:
            return name
    counts: dict[str, int] = {}
    for point in found:
        counts[point.hook] = counts.get(point.hook, 0) + 1
    listed = ", ".join(f"{n} {hook} points" for hook, n in counts.items()) or "no patchable layers"
    return f"another architecture ({listed})"


__all__ = ["Backends", "FamilyInjection", "HookPoint", "check_points", "describe_model", "injection_for",
           "make_patches"]
