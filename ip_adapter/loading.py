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
from .sd3.format import detect_sd3, looks_like_sd3, spec_of
from .sd3.model import SD3Adapter
from .spec import AdapterSpec
from .state_dict import detect_spec, read_file


class AdapterFormat(NamedTuple):
    """One family's checkpoint layout: a cheap key test, the strict builder, and the spec from shapes alone.

    `detect` reads only shapes, so the model check (`probe`) runs it on meta tensors
    made from a file header, with the same order and the same errors as loading.
    """

    name: str
    claims: Callable[[Mapping[str, Tensor]], bool]
    build: Callable[[Mapping[str, Tensor], str], AdapterModule]
    detect: Callable[[Mapping[str, Tensor], str], AdapterSpec]


def _detect_sd3(sd: Mapping[str, Tensor], source: str) -> AdapterSpec:
    return spec_of(detect_sd3(sd, source))


def _claims_unet(sd: Mapping[str, Tensor]) -> bool:
    return any(k.startswith(("image_proj.", "ip_adapter.")) for k in sd)


FORMATS: tuple[AdapterFormat, ...] = (
    # First: the SD3.5 layout shares the UNet prefixes and is told apart by its time embedding / norm_ip.
    AdapterFormat("InstantX SD3.5 IP-Adapter (image_proj.time_embedding.*, ip_adapter.N.norm_ip.*)", looks_like_sd3,
                  SD3Adapter.from_state_dict, _detect_sd3),
    AdapterFormat("XLabs Flux IP-Adapter v1/v2 (ip_adapter_proj_model.*, double_blocks.N.processor.*)",
                  flux_format.claims, flux_format.XLabsFluxAdapter.from_state_dict, flux_format.detect),
    AdapterFormat("IP-Adapter for SD1.5/SDXL (image_proj.*, ip_adapter.*)", _claims_unet,
                  IPAdapterModel.from_state_dict, detect_spec),
)


def claims_any(sd: Mapping[str, Tensor]) -> bool:
    """True when some family's layout claims the keys (an IP-Adapter file, usable or not)."""
    return any(fmt.claims(sd) for fmt in FORMATS)


def detect(sd: Mapping[str, Tensor], source: str = "checkpoint") -> AdapterSpec:
    """The spec of whichever family claims the keys, from shapes only (meta tensors are enough)."""
    for fmt in FORMATS:
        if fmt.claims(sd):
            return fmt.detect(sd, source)
    raise AdapterFormatError(f"'{source}' is not an IP-Adapter checkpoint this pack knows (keys: "
                             f"{', '.join(sorted(sd)[:4]) or 'no tensors'}).")


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
