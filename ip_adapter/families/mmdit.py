"""The MMDiT family (SD3.5): one `patches_replace["dit"]` joint-block replace per block.

Points: joint block `i` (checkpoint `ip_adapter.i.*`) is ComfyUI's `("double_block", i)`
in `comfy/ldm/modules/diffusionmodules/mmdit.py`. The patch (`sd3.patch.JointBlockPatch`)
adds the adapter's term inside the block's joint attention through the
`optimized_attention_override` hook, so the block's own projections are reused.
Its branch is an `sd3.patch.SD3Branch`: SigLIP features turned into tokens once per
step (the projection is timestep-conditioned), not the UNet's fixed tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..sd3.patch import JointBlockPatch
from ..spec import AdapterSpec, ModelFamily
from .seam import Backends, HookPoint

BLOCK = "double_block"


class MMDiTInjection:
    family = ModelFamily.MMDIT

    def points(self, spec: AdapterSpec) -> dict[int, HookPoint]:
        return {i: HookPoint("dit", (BLOCK, i), ((BLOCK, i),)) for i in spec.layer_indices}

    def make_patch(self, branch: Any, layer: int, previous: Any, backends: Backends) -> JointBlockPatch:
        return JointBlockPatch(branch, layer, previous)

    def describe_model(self, found: Mapping[HookPoint, int]) -> str | None:
        """MMDiT and Flux blocks share ComfyUI's "double_block" keys; ComfyUI's MMDiT is 64 x depth wide, Flux is not."""
        widths = [width for point, width in found.items() if point.hook == "dit" and point.key[0] == BLOCK]
        if not widths or any(width != 64 * len(widths) for width in widths):
            return None
        return "SD3.5-Large" if len(widths) == 38 else f"an MMDiT (SD3/SD3.5) with {len(widths)} joint blocks"

    def wrappers(self, branch: Any) -> tuple[tuple[str, Callable[..., Any]], ...]:
        return ()


MMDIT = MMDiTInjection()
