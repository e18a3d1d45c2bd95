"""Load any supported adapter file: read it safely, ask each family's format which one it is, build it.

Each family's format module says whether a state dict is in its layout
(`claims`, from key prefixes only) and then detects the variant and builds the
module strictly (`build`). A file no family claims is refused with what the
known layouts look like. The result satisfies `patch.AdapterModule` and carries
its `AdapterSpec`, so the nodes never branch on the family.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import NamedTuple

from torch import Tensor

from .errors import AdapterFormatError
from .families import flux_format
from .model import IPAdapterModel
from .patch import AdapterModule
from .state_dict import read_file


class AdapterFormat(NamedTuple):
    """One family's checkpoint layout: a cheap key test and the strict builder."""

    name: str
    claims: Callable[[Mapping[str, Tensor]], bool]
    build: Callable[[Mapping[str, Tensor], str], AdapterModule]


def _claims_unet(sd: Mapping[str, Tensor]) -> bool:
    return any(k.startswith(("image_proj.", "ip_adapter.")) for k in sd)


FORMATS: tuple[AdapterFormat, ...] = (
    AdapterFormat("XLabs Flux IP-Adapter v1/v2 (ip_adapter_proj_model.*, double_blocks.N.processor.*)",
                  flux_format.claims, flux_format.XLabsFluxAdapter.from_state_dict),
    AdapterFormat("IP-Adapter for SD1.5/SDXL (image_proj.*, ip_adapter.*)", _claims_unet,
                  IPAdapterModel.from_state_dict),
)


def adapter_from_state_dict(sd: Mapping[str, Tensor], source: str = "checkpoint") -> AdapterModule:
    """The adapter module the keys describe, of whichever family claims them."""
    for fmt in FORMATS:
        if fmt.claims(sd):
            return fmt.build(sd, source)
    sample = ", ".join(sorted(sd)[:4]) or "no tensors"
    raise AdapterFormatError(
        f"'{source}' is not an IP-Adapter checkpoint this pack knows (keys: {sample}). Known layouts: "
        + "; ".join(fmt.name for fmt in FORMATS) + "."
    )


def load_adapter(path: str | os.PathLike[str]) -> AdapterModule:
    """Read `path` (safetensors, or a pickle with weights only), detect and build; errors name the file."""
    return adapter_from_state_dict(read_file(path), source=os.path.basename(os.fspath(path)))
