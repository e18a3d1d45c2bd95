"""Weight types: how strongly each cross-attention layer takes the image term, as data.

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
from dataclasses import dataclass

from .errors import ImagePromptError
from .layout import slot_for_layer
from .number_list import parse_numbers
from .spec import BaseModel

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
    """One transformer block: its ComfyUI key and the checkpoint layers inside it."""

    kind: str  # "input", "middle" or "output"
    number: int
    layers: tuple[int, ...]

    @property
    def name(self) -> str:
        return f"{self.kind} {self.number}"


@dataclass(frozen=True)
class LayerPlan:
    """Per checkpoint layer: the multiplier of `weight`, and which layers are inverted."""

    multipliers: Mapping[int, float]
    inverted: frozenset[int]

    def active(self) -> tuple[int, ...]:
        """The layers that carry an image term (multiplier not 0)."""
        return tuple(i for i, m in self.multipliers.items() if m != 0.0)


def blocks(base: BaseModel) -> tuple[Block, ...]:
    """The transformer blocks of `base` in execution order (input, middle, output)."""
    grouped: dict[tuple[str, int], list[int]] = {}
    for index, slot in slot_for_layer(base).items():
        grouped.setdefault((slot.block, slot.number), []).append(index)
    order = {"input": 0, "middle": 1, "output": 2}
    keys = sorted(grouped, key=lambda key: (order[key[0]], key[1]))
    return tuple(Block(kind, number, tuple(grouped[(kind, number)])) for kind, number in keys)


def block_multipliers(base: BaseModel, weight_type: str) -> tuple[tuple[float, ...], frozenset[int]]:
    """Multiplier per block (execution order) and the inverted block positions."""
    found = blocks(base)
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
    raise ImagePromptError(f"ApplyIPAdapter weight_type: unknown '{weight_type}'; choose one of {list(WEIGHT_TYPES)}.")


def layer_plan(base: BaseModel, weight_type: str, layer_weights: Sequence[float] | None = None) -> LayerPlan:
    """Expand a weight type (or an explicit per-layer list) to every checkpoint layer of `base`.

    An explicit list replaces the type's multipliers; the inverted layers of the
    "precise" types are kept, as in the reference.
    """
    values, inverted_blocks = block_multipliers(base, weight_type)
    found = blocks(base)
    multipliers = {layer: value for block, value in zip(found, values) for layer in block.layers}
    inverted = frozenset(layer for position in inverted_blocks for layer in found[position].layers)
    if layer_weights is not None:
        multipliers = dict(zip(sorted(multipliers), layer_weights))
    return LayerPlan(dict(sorted(multipliers.items())), inverted)




def parse_layer_weights(text: str | None, base: BaseModel, input_name: str = "layer_weights") -> tuple[float, ...] | None:
    """'1, 0.5, 0, ...' -> one float per checkpoint layer of `base`; blank -> None.

    Numbers are separated by commas, semicolons, spaces or new lines, in
    checkpoint order (`ip_adapter.1`, `.3`, `.5`, ...): 16 for SD1.5, 70 for SDXL.
    """
    if text is None or not text.strip():
        return None
    where = f"ApplyIPAdapter {input_name}"
    count = len(slot_for_layer(base))
    if ":" in text:
        raise ImagePromptError(
            f"{where}: 'block:weight' pairs (the other IP-Adapter pack's syntax) are not read here; give "
            f"{count} numbers, one per {base.value} cross-attention layer in checkpoint order, e.g. '1, 1, 0.5, ...'."
        )
    values = parse_numbers(text, where, f"Give {count} numbers, one per layer, e.g. '1, 1, 0.5, ...'.")
    if len(values) != count:
        raise ImagePromptError(
            f"{where}: got {len(values)} numbers, but a {base.value} adapter has {count} cross-attention layers; "
            f"give exactly {count} (checkpoint order ip_adapter.1, .3, ... .{2 * count - 1}), or leave it empty "
            "to use weight_type."
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
