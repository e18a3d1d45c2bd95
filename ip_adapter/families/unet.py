"""UNet family (SD1.5, SDXL): the attn2 replace that adds the image term to one cross-attention slot.

ComfyUI calls `patch(q, k, v, extra_options)` with q/k/v already projected by
the host layer and feeds the result to the layer's `to_out`. One `SlotPatch` is
registered per slot (`layout.slot_for_layer`); if the slot already held a patch
(another IP-Adapter, or another pack's), that patch computes the text branch and
ours adds its term, so adapters stack instead of replacing each other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .. import layout
from ..attention import AttentionFn, image_term
from ..patch import ImageBranch
from ..spec import AdapterSpec, BaseModel, ModelFamily
from .seam import Backends, HookPoint
from .wrapping import WrapsPrevious

AttnPatch = Callable[[Tensor, Tensor, Tensor, dict], Tensor]


@dataclass(frozen=True, eq=False)
class SlotPatch(WrapsPrevious):
    """attn2 replace for one slot: `previous(q, k, v) + w * mask * Attn(q, K', V')`.

    `previous` is the patch that held the slot before (it then computes the text
    branch, plus its own additions); None means plain attention with `attention`,
    the host's backend (ComfyUI's `optimized_attention`). `image_attention` runs
    the image term (default: `attention`); it may differ because the image term
    has only 4-16 keys (see `nodes.comfy_bridge.image_attention_backend`).
    The layer's effective weight is fixed at construction.
    """

    branch: ImageBranch
    layer_index: int
    attention: AttentionFn
    previous: AttnPatch | None = None
    image_attention: AttentionFn | None = None
    weight: float = field(init=False)
    _owns_output: bool = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", self.branch.layer_weight(self.layer_index))
        if self.image_attention is None:
            object.__setattr__(self, "image_attention", self.attention)
        # The text branch's output is ours to add into unless a foreign patch made it.
        previous = self.previous
        owned = previous is None or (isinstance(previous, SlotPatch) and (previous._owns_output or previous.weight != 0))
        object.__setattr__(self, "_owns_output", owned)

    def __deepcopy__(self, memo: dict) -> SlotPatch:
        return self

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, extra_options: dict) -> Tensor:
        heads = extra_options["n_heads"]
        precision = extra_options.get("attn_precision")
        if self.previous is not None:
            out = self.previous(q, k, v, extra_options)
        else:
            out = self.attention(q, k, v, heads, attn_precision=precision, transformer_options=extra_options)
        if self.weight == 0.0:
            return out
        branch = self.branch
        chunks: Sequence[int] = extra_options["cond_or_uncond"]
        gate = branch.gate(extra_options["sigmas"], len(chunks), q.device, q.dtype)
        if gate.skip:
            return out
        batch = q.shape[0] // len(chunks)
        k_ip, v_ip = branch.rows(self.layer_index, chunks, batch, q.device, q.dtype, branch.frames(batch, extra_options))
        term = image_term(q, k_ip, v_ip, heads, self.image_attention, attn_precision=precision,
                          transformer_options=extra_options)
        # In place on tensors made in this call (no autograd: ComfyUI samples in inference mode).
        inplace = not torch.is_grad_enabled()
        term = branch.scale_term(term, gate, extra_options, len(chunks), batch, inplace)
        if branch.mask is not None:
            mask = branch.mask_rows(extra_options, q.shape[1], len(chunks), batch, q.device, term.dtype)
            term = term.mul_(mask) if inplace else term * mask
        return out.add_(term) if inplace and self._owns_output else out + term



def slot_patches(
    branch: ImageBranch,
    slots_by_layer: dict[int, Any],
    existing: Callable[[Any], AttnPatch | None],
    attention: AttentionFn,
    image_attention: AttentionFn | None = None,
) -> list[tuple[Any, SlotPatch]]:
    """One SlotPatch per slot, each wrapping whatever `existing(slot)` already holds.

    Layers whose multiplier is 0 get no patch at all (the slot keeps what it had).
    """
    patches = []
    for index, slot in slots_by_layer.items():
        if branch.layer_weight(index) == 0.0:
            continue
        patches.append((slot, SlotPatch(branch, index, attention, existing(slot), image_attention)))
    return patches


def _point(slot: layout.Slot) -> HookPoint:
    return HookPoint("attn2", tuple(slot), layout.comfy_keys(slot))


class UNetInjection:
    """attn2 slots of SD1.5/SDXL UNets (`layout` holds the checkpoint-index -> slot tables)."""

    family = ModelFamily.UNET

    def points(self, spec: AdapterSpec) -> dict[int, HookPoint]:
        return {index: _point(slot) for index, slot in layout.slot_for_layer(spec.base).items()}

    def make_patch(self, branch: ImageBranch, layer: int, previous: Any, backends: Backends) -> SlotPatch:
        return SlotPatch(branch, layer, backends.attention, previous, backends.image)

    def describe_model(self, found: Mapping[HookPoint, int]) -> str | None:
        slots = {point for point in found if point.hook == "attn2"}
        for base in (BaseModel.SD15, BaseModel.SDXL):
            if slots == {_point(slot) for slot in layout.slots(base)}:
                return base.value
        return None

    def wrappers(self, branch: ImageBranch) -> tuple[tuple[str, Callable[..., Any]], ...]:
        return ()  # the UNet records the latent shape itself ("original_shape")


UNET = UNetInjection()
