"""Where each checkpoint layer goes in ComfyUI's models: data, not code.

UNet (SD1.5, SDXL): one attn2 slot per cross-attention layer (tables below).
Flux: layer N of the checkpoint is ComfyUI's double-stream block N
(`patches_replace["dit"][("double_block", N)]`); XLabs number them as ComfyUI does.

The published checkpoints number their layers in diffusers' module order
(down blocks, then up blocks, then the mid block; attn1 and attn2 counted
together, so cross-attention layers get the odd indices 1, 3, 5, ...).
ComfyUI runs input blocks, then the middle block, then output blocks, and keys
an attn2 replace patch by `(block_name, block_number, transformer_index)`.
The middle block is `("middle", 0)` in ComfyUI 0.8.0 (a patch registered under
`("middle", 1)` is silently never called).
"""

from __future__ import annotations

from typing import NamedTuple

from .spec import FAMILY_OF_BASE, BaseModel, ModelFamily

#: Double-stream blocks of Flux dev/schnell (ComfyUI `double_blocks`, diffusers `transformer_blocks`).
FLUX_DOUBLE_BLOCKS = 19


class Slot(NamedTuple):
    """One cross-attention layer of ComfyUI's UNet, as an attn2 replace key."""

    block: str  # "input", "middle" or "output"
    number: int  # index of the block in ComfyUI's input_blocks/output_blocks (0 for middle)
    transformer_index: int  # index of the BasicTransformerBlock inside it


#: Per base model, in checkpoint order: (block, number, transformer depth).
_GROUPS: dict[BaseModel, tuple[tuple[str, int, int], ...]] = {
    BaseModel.SD15: (
        ("input", 1, 1), ("input", 2, 1),
        ("input", 4, 1), ("input", 5, 1),
        ("input", 7, 1), ("input", 8, 1),
        ("output", 3, 1), ("output", 4, 1), ("output", 5, 1),
        ("output", 6, 1), ("output", 7, 1), ("output", 8, 1),
        ("output", 9, 1), ("output", 10, 1), ("output", 11, 1),
        ("middle", 0, 1),
    ),
    BaseModel.SDXL: (
        ("input", 4, 2), ("input", 5, 2),
        ("input", 7, 10), ("input", 8, 10),
        ("output", 0, 10), ("output", 1, 10), ("output", 2, 10),
        ("output", 3, 2), ("output", 4, 2), ("output", 5, 2),
        ("middle", 0, 10),
    ),
}


def slots(base: BaseModel) -> tuple[Slot, ...]:
    """All cross-attention slots of a UNet `base`, in checkpoint order (16 for SD1.5, 70 for SDXL)."""
    if base not in _GROUPS:
        raise ValueError(f"{base.value} has no UNet cross-attention slots")
    return tuple(
        Slot(block, number, index)
        for block, number, depth in _GROUPS[base]
        for index in range(depth)
    )


def checkpoint_indices(base: BaseModel) -> tuple[int, ...]:
    """The `ip_adapter.N` indices a checkpoint for `base` holds: 1, 3, 5, ..."""
    return tuple(2 * i + 1 for i in range(len(slots(base))))


def slot_for_layer(base: BaseModel) -> dict[int, Slot]:
    """Map checkpoint index `N` of `ip_adapter.N.*` to its ComfyUI slot."""
    return dict(zip(checkpoint_indices(base), slots(base)))


def comfy_keys(slot: Slot) -> tuple[tuple, ...]:
    """The keys ComfyUI looks up for this slot, most specific first.

    `BasicTransformerBlock` tries `(block, number, transformer_index)` and then
    `(block, number)`; a patch that another pack registered under the short
    key is the one that would run, so composition must look there too.
    """
    return ((slot.block, slot.number, slot.transformer_index), (slot.block, slot.number))


class LayerGroup(NamedTuple):
    """Checkpoint layers that share one weight-type multiplier: a UNet transformer block or a DiT block."""

    kind: str  # "input", "middle", "output" (UNet) or "double" (Flux)
    number: int
    layers: tuple[int, ...]


def layer_groups(base: BaseModel) -> tuple[LayerGroup, ...]:
    """The weight-type blocks of `base` in execution order, each with its checkpoint layers."""
    if FAMILY_OF_BASE[base] is ModelFamily.FLUX:
        return tuple(LayerGroup("double", i, (i,)) for i in range(FLUX_DOUBLE_BLOCKS))
    grouped: dict[tuple[str, int], list[int]] = {}
    for index, slot in slot_for_layer(base).items():
        grouped.setdefault((slot.block, slot.number), []).append(index)
    order = {"input": 0, "middle": 1, "output": 2}
    keys = sorted(grouped, key=lambda key: (order[key[0]], key[1]))
    return tuple(LayerGroup(kind, number, tuple(grouped[(kind, number)])) for kind, number in keys)


def layer_indices(base: BaseModel) -> tuple[int, ...]:
    """Every checkpoint layer of `base`, ascending (what `layer_weights` lists, in this order)."""
    return tuple(sorted(layer for group in layer_groups(base) for layer in group.layers))
