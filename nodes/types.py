"""The pack's custom socket types and the values that travel on them.

Type names are deliberately distinct from other IP-Adapter packs' (`IPADAPTER`):
if two packs shared a name, links between them would validate in the UI and
fail at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from comfy_api.latest import io

from ..ip_adapter.patch import AdapterModule
from ..ip_adapter.spec import AdapterSpec
from ..utils.weak_cache import PerObjectCache

IPAdapterSocket = io.Custom("IP_ADAPTER_CHECKPOINT")
ImagePromptSocket = io.Custom("IP_ADAPTER_IMAGE_PROMPT")


@dataclass(frozen=True, eq=False)
class LoadedAdapter:
    """A loaded checkpoint: the module, what it is, and the ModelPatcher that owns its weights.

    `zero_pixels` holds the encoding of zero pixels per CLIP vision model (the
    unconditional features of plus/full-face adapters): constant for a given model
    and image size, so it is computed once, and it lives as long as this value
    does (the executor keeps LoadIPAdapter's output between queues).
    """

    model: AdapterModule = field(repr=False)  # the family's module; repr=False: a module's repr is long and slow
    patcher: Any = field(repr=False)  # comfy.model_patcher.ModelPatcher
    name: str
    zero_pixels: PerObjectCache = field(default_factory=PerObjectCache, repr=False)

    @property
    def spec(self) -> AdapterSpec:
        """The UNet adapter's spec; SD3.5 adapters answer with their `SD3AdapterShape` (same describe())."""
        return self.model.spec
