"""The pack's custom socket types and the values that travel on them.

Type names are deliberately distinct from other IP-Adapter packs' (`IPADAPTER`):
if two packs shared a name, links between them would validate in the UI and
fail at run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from comfy_api.latest import io

from ..ip_adapter.patch import AdapterModule
from ..ip_adapter.spec import AdapterSpec

IPAdapterSocket = io.Custom("IP_ADAPTER_CHECKPOINT")
ImagePromptSocket = io.Custom("IP_ADAPTER_IMAGE_PROMPT")


@dataclass(frozen=True, eq=False)
class LoadedAdapter:
    """A loaded checkpoint: the module, what it is, and the ModelPatcher that owns its weights."""

    model: AdapterModule  # the family's module (IPAdapterModel for UNets)
    patcher: Any  # comfy.model_patcher.ModelPatcher
    name: str

    @property
    def spec(self) -> AdapterSpec:
        return self.model.spec
