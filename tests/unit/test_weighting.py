"""Weight types as data: the tables, their expansion to checkpoint layers, the expert list, the README."""

from __future__ import annotations

import re

import pytest
from ipadapter_pack.ip_adapter import weighting
from ipadapter_pack.ip_adapter.errors import ImagePromptError
from ipadapter_pack.ip_adapter.layout import slot_for_layer
from ipadapter_pack.ip_adapter.spec import BaseModel
from support.pack import REPO_ROOT

SD15, SDXL = BaseModel.SD15, BaseModel.SDXL


def _layers_of(base: BaseModel, *blocks: tuple[str, int]) -> set[int]:
    return {i for i, slot in slot_for_layer(base).items() if (slot.block, slot.number) in blocks}


def test_the_type_list_is_the_reference_packs() -> None:
    assert weighting.WEIGHT_TYPES == (
        "linear", "ease in", "ease out", "ease in-out", "reverse in-out", "weak input", "weak output",
        "weak middle", "strong middle", "style transfer", "composition", "strong style transfer",
        "style and composition", "style transfer precise", "composition precise",
    )


@pytest.mark.parametrize("base,count,blocks", [(SD15, 16, 16), (SDXL, 70, 11)])
def test_every_type_covers_every_layer_of_the_base(base, count, blocks) -> None:
    assert len(weighting.blocks(base)) == blocks
    for weight_type in weighting.WEIGHT_TYPES:
        plan = weighting.layer_plan(base, weight_type)
        assert list(plan.multipliers) == list(slot_for_layer(base)), weight_type
        assert len(plan.multipliers) == count
        assert plan.inverted <= set(plan.multipliers)


def test_blocks_run_in_comfyui_execution_order() -> None:
    names = [b.name for b in weighting.blocks(SDXL)]
    assert names == ["input 4", "input 5", "input 7", "input 8", "middle 0", "output 0", "output 1", "output 2",
                     "output 3", "output 4", "output 5"]
    assert weighting.blocks(SDXL)[6].layers == tuple(range(69, 88, 2))  # output 1 = up_blocks.0.attentions.1
    assert weighting.blocks(SD15)[6] == weighting.Block("middle", 0, (31,))


def test_instantstyle_blocks_for_sdxl() -> None:
    """Style = up_blocks.0.attentions.1 (ComfyUI output 1), layout = down_blocks.2.attentions.1 (input 8)."""
    style = weighting.layer_plan(SDXL, "style transfer")
    assert set(style.active()) == _layers_of(SDXL, ("output", 1)) == set(range(69, 88, 2))
    composition = weighting.layer_plan(SDXL, "composition")
    assert set(composition.active()) == _layers_of(SDXL, ("input", 8)) == set(range(29, 48, 2))
    both = weighting.layer_plan(SDXL, "style and composition")
    assert set(both.active()) == set(style.active()) | set(composition.active()) and not both.inverted
    strong = weighting.layer_plan(SDXL, "strong style transfer")
    assert set(strong.active()) == set(range(1, 140, 2)) - set(composition.active())


def test_sd15_presets_match_the_reference_pack() -> None:
    style = weighting.layer_plan(SD15, "style transfer")
    assert set(style.active()) == _layers_of(SD15, ("input", 1), ("input", 2), ("input", 4), ("input", 5),
                                             *(("output", n) for n in range(5, 12)))
    composition = weighting.layer_plan(SD15, "composition")
    assert {i: m for i, m in composition.multipliers.items() if m} == {9: 0.25, 11: 1.0}  # input 7, input 8


@pytest.mark.parametrize("base,composition_blocks", [(SD15, {("input", 7), ("input", 8)}), (SDXL, {("input", 8)})])
def test_precise_types_invert_the_other_side(base, composition_blocks) -> None:
    composition_layers = _layers_of(base, *composition_blocks)
    style_precise = weighting.layer_plan(base, "style transfer precise")
    assert style_precise.inverted == composition_layers
    assert style_precise.multipliers == weighting.layer_plan(base, "style and composition").multipliers
    composition_precise = weighting.layer_plan(base, "composition precise")
    assert composition_precise.inverted == set(composition_precise.multipliers) - composition_layers
    assert set(composition_precise.active()) == set(composition_precise.multipliers)  # every layer acts


def test_schedule_shapes_follow_the_reference_formulas() -> None:
    ease_in = weighting.block_multipliers(SD15, "ease in")[0]
    assert ease_in[0] == 1.0 and ease_in[6] == pytest.approx(0.05 + 0.95 * (1 - 6 / 16))
    ease_out = weighting.block_multipliers(SDXL, "ease out")[0]
    assert ease_out[0] == pytest.approx(0.05) and ease_out[10] == pytest.approx(0.05 + 0.95 * 10 / 11)
    in_out = weighting.block_multipliers(SD15, "ease in-out")[0]
    assert in_out[8] == 1.0 and in_out[0] == pytest.approx(0.05)
    reverse = weighting.block_multipliers(SD15, "reverse in-out")[0]
    assert reverse[8] == pytest.approx(0.05) and reverse[0] == 1.0
    plan = weighting.layer_plan(SDXL, "ease in")  # all ten layers of a block share its value
    assert len({plan.multipliers[i] for i in range(9, 28, 2)}) == 1


@pytest.mark.parametrize("weight_type,weak", [("weak input", {"input"}), ("weak output", {"output"}),
                                              ("weak middle", {"middle"}), ("strong middle", {"input", "output"})])
def test_block_kind_types_scale_whole_block_kinds(weight_type, weak) -> None:
    for base in (SD15, SDXL):
        plan = weighting.layer_plan(base, weight_type)
        for index, slot in slot_for_layer(base).items():
            assert plan.multipliers[index] == (0.2 if slot.block in weak else 1.0)


def test_an_explicit_list_replaces_the_table_in_checkpoint_order() -> None:
    values = weighting.parse_layer_weights("1, 0.5 0\n" + ", ".join(["2"] * 13), SD15)
    plan = weighting.layer_plan(SD15, "style transfer", values)
    assert plan.multipliers[1] == 1.0 and plan.multipliers[3] == 0.5 and plan.multipliers[5] == 0.0
    assert plan.multipliers[31] == 2.0 and 5 not in plan.active()
    precise = weighting.layer_plan(SDXL, "style transfer precise", [1.0] * 70)
    assert precise.inverted == weighting.layer_plan(SDXL, "style transfer precise").inverted


@pytest.mark.parametrize("text", [None, "", "  \n "])
def test_blank_list_means_use_the_weight_type(text) -> None:
    assert weighting.parse_layer_weights(text, SDXL) is None


@pytest.mark.parametrize("text,base,message", [
    ("1, 1, 1", SD15, r"layer_weights: got 3 numbers, but a SD1\.5 adapter has 16 .* give exactly 16"),
    (", ".join(["1"] * 16), SDXL, r"layer_weights: got 16 numbers, but a SDXL adapter has 70"),
    ("1, x, 1", SD15, r"layer_weights: item 2 'x' is not a number"),
    ("1, inf" + ", 1" * 14, SD15, r"layer_weights: item 2 'inf' is not a finite number"),
    ("0:1, 1:1", SD15, r"layer_weights: 'block:weight' pairs .* give 16 numbers"),
])
def test_bad_lists_are_refused_naming_the_input(text, base, message) -> None:
    with pytest.raises(ImagePromptError, match=message):
        weighting.parse_layer_weights(text, base)


def test_unknown_type_is_refused_by_name() -> None:
    with pytest.raises(ImagePromptError, match="weight_type: unknown 'style'"):
        weighting.layer_plan(SD15, "style")


@pytest.mark.parametrize("base", [SD15, SDXL])
def test_readme_documents_exactly_these_tables(base) -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert weighting.markdown_table(base) in readme, f"README's {base.value} weight-type table is out of date"


def test_flux_takes_linear_and_one_multiplier_per_double_block() -> None:
    flux = BaseModel.FLUX
    assert weighting.layer_plan(flux, "linear").multipliers == {i: 1.0 for i in range(19)}
    values = weighting.parse_layer_weights(", ".join(["0"] * 18 + ["0.5"]), flux, "ApplyIPAdapter layer_weights")
    assert weighting.layer_plan(flux, "linear", values).active() == (18,)
    with pytest.raises(ImagePromptError, match=r"ApplyIPAdapter layer_weights: got 16 numbers.* 19 double blocks"):
        weighting.parse_layer_weights(", ".join(["1"] * 16), flux, "ApplyIPAdapter layer_weights")


@pytest.mark.parametrize("weight_type", [t for t in weighting.WEIGHT_TYPES if t != "linear"])
def test_unet_weight_types_are_refused_on_flux_saying_what_to_use(weight_type) -> None:
    with pytest.raises(ImagePromptError, match=rf"ApplyIPAdapter weight_type: '{weight_type}' is built for the UNet.*"
                                               r"Use 'linear'.*layer_weights \(19 numbers"):
        weighting.layer_plan(BaseModel.FLUX, weight_type, where="ApplyIPAdapter weight_type")


@pytest.mark.parametrize("mode", ["K+V w/ C penalty", "K+mean(V) w/ C penalty"])
def test_c_penalty_scalings_are_refused_on_flux_only(mode) -> None:
    weighting.check_embeds_scaling(SDXL, mode)
    with pytest.raises(ImagePromptError, match=rf"ApplyIPAdapter embeds_scaling: '{re.escape(mode)}' divides by 1280.*"
                                               r"Use 'V only'"):
        weighting.check_embeds_scaling(BaseModel.FLUX, mode, "ApplyIPAdapter embeds_scaling")
    weighting.check_embeds_scaling(BaseModel.FLUX, "K+V")
