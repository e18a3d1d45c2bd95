"""Weight types: how strongly each patched layer takes the image term, as data.

(UNet families use every type below; on Flux only `linear` and explicit
`layer_weights` over the 19 double blocks make sense, and the rest are refused.)

A weight type is a multiplier per *transformer block* of the UNet, in the order
ComfyUI runs them (input blocks, middle, output blocks; ComfyUI's
`transformer_index`): 16 blocks of one layer each for SD1.5, 11 blocks of 2 or
10 layers for SDXL. Every checkpoint layer (`ip_adapter.N`) inside a block gets
that block's multiplier; the image term of layer N is scaled by
`weight * multiplier[N]`, and a layer whose multiplier is 0 is not patched.

The shapes and presets follow ComfyUI_IPAdapter_plus, which defined them:
schedule shapes are `0.05 + 0.95 * f(t / blocks)` of the block position t;
"weak X" / "strong middle" scale whole block kinds by 0.2; the style and
composition presets follow InstantStyle (Wang et al., 2024): in SDXL the style
lives in `up_blocks.0.attentions.1` (ComfyUI output block 1) and the layout in
`down_blocks.2.attentions.1` (input block 8). The "precise" presets also mark
*inverted* blocks: there the conditional rows get no image term and the
unconditional rows get the reference, so classifier-free guidance pushes the
image away from the reference in that block (the reference's trick: cond tokens
zeroed, uncond tokens = cond tokens).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from . import layout
from .errors import ImagePromptError
from .number_list import parse_numbers
from .spec import FAMILY_OF_BASE, BaseModel, ModelFamily

LINEAR = "linear"
SCHEDULES = ("ease in", "ease out", "ease in-out", "reverse in-out")
BLOCK_KINDS = ("weak input", "weak output", "weak middle", "strong middle")
PRESETS = ("style transfer", "composition", "strong style transfer", "style and composition",
           "style transfer precise", "composition precise")
#: Every weight type, in the order the node offers them (the reference's order).
WEIGHT_TYPES: tuple[str, ...] = (LINEAR, *SCHEDULES, *BLOCK_KINDS, *PRESETS)

#: (multipliers per block in execution order, inverted block positions), per base model.
#: SD1.5 blocks: input 1 2 4 5 7 8 | middle | output 3 4 5 6 7 8 9 10 11.
#: SDXL blocks: input 4 5 7 8 | middle | output 0 1 2 3 4 5.
_PRESET_TABLES: dict[BaseModel, dict[str, tuple[tuple[float, ...], frozenset[int]]]] = {
    BaseModel.SD15: {
        "style transfer": ((1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1), frozenset()),
        "composition": ((0, 0, 0, 0, 0.25, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), frozenset()),
        "strong style transfer": ((1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1), frozenset()),
        "style and composition": ((1, 1, 1, 1, 0.25, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1), frozenset()),
        "style transfer precise": ((1, 1, 1, 1, 0.25, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1), frozenset({4, 5})),
        "composition precise": ((1, 1, 1, 1, 0.25, 1, 0.1, 0.1, 0.1, 1, 1, 1, 1, 1, 1, 1),
                                frozenset(range(16)) - {4, 5}),
    },
    BaseModel.SDXL: {
        "style transfer": ((0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0), frozenset()),
        "composition": ((0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0), frozenset()),
        "strong style transfer": ((1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1), frozenset()),
        "style and composition": ((0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0), frozenset()),
        "style transfer precise": ((0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0), frozenset({3})),
        "composition precise": ((0.1, 0.1, 0.1, 1, 0.1, 0.1, 1, 0.1, 0.1, 0.1, 0.1),
                                frozenset(range(11)) - {3}),
    },
}


@dataclass(frozen=True)
class Block:
    """One weight-type block: its ComfyUI position and the checkpoint layers inside it."""

    kind: str  # "input", "middle", "output" (UNet) or "double" (Flux)
    number: int
    layers: tuple[int, ...]

    @property
    def name(self) -> str:
        return f"{self.kind} {self.number}"


@dataclass(frozen=True)
class LayerPlan:
    """Per checkpoint layer: the multiplier of `weight`, and which layers are inverted.

    The one meaning of "layer weights" in the pack: the node builds it, the image
    branch reads it (`multiplier`), the families skip layers whose multiplier is 0.
    A layer the plan does not list takes 1.0.
    """

    multipliers: Mapping[int, float] = field(default_factory=dict)
    inverted: frozenset[int] = frozenset()

    def multiplier(self, layer: int) -> float:
        return self.multipliers.get(layer, 1.0)

    def active(self) -> tuple[int, ...]:
        """The layers that carry an image term (multiplier not 0)."""
        return tuple(i for i, m in self.multipliers.items() if m != 0.0)


def blocks(base: BaseModel) -> tuple[Block, ...]:
    """The weight-type blocks of `base` in execution order (UNet: input, middle, output; Flux: double blocks)."""
    return tuple(Block(group.kind, group.number, group.layers) for group in layout.layer_groups(base))


def block_multipliers(base: BaseModel, weight_type: str,
                      where: str = "weight_type") -> tuple[tuple[float, ...], frozenset[int]]:
    """Multiplier per block (execution order) and the inverted block positions.

    On a non-UNet family only `linear` is accepted: the other types are tables
    and curves over UNet input/middle/output blocks, which a DiT does not have.
    """
    found = blocks(base)
    if FAMILY_OF_BASE[base] is not ModelFamily.UNET and weight_type != LINEAR:
        raise ImagePromptError(
            f"{where}: '{weight_type}' is built for the UNet's input/middle/output blocks (SD1.5, SDXL); a "
            f"{base.value} adapter has {len(found)} {found[0].kind} blocks and none of those. Use 'linear' "
            f"here, and give layer_weights ({len(found)} numbers, one per {found[0].kind} block) to weigh "
            "blocks differently, or start/end percent to limit the steps."
        )
    count = len(found)
    if weight_type == LINEAR:
        return (1.0,) * count, frozenset()
    if weight_type in SCHEDULES:
        half = count / 2
        shape = {
            "ease in": lambda t: 1 - t / count,
            "ease out": lambda t: t / count,
            "ease in-out": lambda t: 1 - abs(t - half) / half,
            "reverse in-out": lambda t: abs(t - half) / half,
        }[weight_type]
        return tuple(0.05 + 0.95 * shape(t) for t in range(count)), frozenset()
    if weight_type in BLOCK_KINDS:
        weak = {"weak input": {"input"}, "weak output": {"output"}, "weak middle": {"middle"},
                "strong middle": {"input", "output"}}[weight_type]
        return tuple(0.2 if b.kind in weak else 1.0 for b in found), frozenset()
    if weight_type in PRESETS:
        values, inverted = _PRESET_TABLES[base][weight_type]
        return tuple(float(v) for v in values), inverted
    raise ImagePromptError(f"{where}: unknown '{weight_type}'; choose one of {list(WEIGHT_TYPES)}.")


def check_embeds_scaling(base: BaseModel, mode: str, where: str = "embeds_scaling") -> None:
    """Refuse the "C penalty" scalings outside the UNet: their divisor, 1280, is SD's widest attention layer."""
    if FAMILY_OF_BASE[base] is not ModelFamily.UNET and "penalty" in mode:
        raise ImagePromptError(
            f"{where}: '{mode}' divides by 1280, the width of SD's widest attention layer; it has no meaning for a "
            f"{base.value} adapter. Use 'V only' (the reference) or 'K+V'."
        )


def layer_plan(base: BaseModel, weight_type: str, layer_weights: Sequence[float] | None = None,
               where: str = "weight_type") -> LayerPlan:
    """Expand a weight type (or an explicit per-layer list) to every checkpoint layer of `base`.

    An explicit list replaces the type's multipliers; the inverted layers of the
    "precise" types are kept, as in the reference.
    """
    values, inverted_blocks = block_multipliers(base, weight_type, where)
    found = blocks(base)
    multipliers = {layer: value for block, value in zip(found, values) for layer in block.layers}
    inverted = frozenset(layer for position in inverted_blocks for layer in found[position].layers)
    if layer_weights is not None:
        multipliers = dict(zip(sorted(multipliers), layer_weights))
    return LayerPlan(dict(sorted(multipliers.items())), inverted)




def parse_layer_weights(text: str | None, base: BaseModel, where: str = "layer_weights") -> tuple[float, ...] | None:
    """'1, 0.5, 0, ...' -> one float per patched layer of `base`; blank -> None.

    Numbers are separated by commas, semicolons, spaces or new lines, in
    checkpoint order: `ip_adapter.1`, `.3`, `.5`, ... (16 for SD1.5, 70 for
    SDXL), or double blocks 0..18 for Flux. `where` names the input in messages.
    """
    if text is None or not text.strip():
        return None
    indices = layout.layer_indices(base)
    count = len(indices)
    what = "double block" if FAMILY_OF_BASE[base] is ModelFamily.FLUX else "cross-attention layer"
    if ":" in text:
        raise ImagePromptError(
            f"{where}: 'block:weight' pairs (the other IP-Adapter pack's syntax) are not read here; give "
            f"{count} numbers, one per {base.value} {what} in checkpoint order, e.g. '1, 1, 0.5, ...'."
        )
    values = parse_numbers(text, where, f"Give {count} numbers, one per layer, e.g. '1, 1, 0.5, ...'.")
    if len(values) != count:
        order = ("ip_adapter.1, .3, ... ." + str(indices[-1]) if FAMILY_OF_BASE[base] is ModelFamily.UNET
                 else f"double_blocks.0 ... .{indices[-1]}")
        raise ImagePromptError(
            f"{where}: got {len(values)} numbers, but a {base.value} adapter has {count} {what}s; "
            f"give exactly {count} (checkpoint order {order}), or leave it empty to use weight_type."
        )
    return tuple(values)


def markdown_table(base: BaseModel) -> str:
    """The README table for `base`: one row per weight type, one column per block."""
    found = blocks(base)
    header = "| weight type | " + " | ".join(b.name for b in found) + " |"
    layers = "| checkpoint layers | " + " | ".join(_span(b.layers) for b in found) + " |"
    rule = "|---|" + "---|" * len(found)
    rows = [header, rule, layers]
    for weight_type in WEIGHT_TYPES:
        values, inverted = block_multipliers(base, weight_type)
        cells = [_cell(v, i in inverted) for i, v in enumerate(values)]
        rows.append(f"| {weight_type} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _span(layers: tuple[int, ...]) -> str:
    if len(layers) <= 2:
        return ", ".join(str(layer) for layer in layers)
    return f"{layers[0]}..{layers[-1]}"


def _cell(value: float, inverted: bool) -> str:
    text = "0" if value == 0 else f"{value:.2f}".rstrip("0").rstrip(".")
    return f"{text}*" if inverted else text
