"""Checkpoint index -> ComfyUI slot tables (REFERENCE.md: slot order)."""

from __future__ import annotations

from ipadapter_pack.ip_adapter import layout
from ipadapter_pack.ip_adapter.spec import BaseModel


def test_sd15_maps_16_layers_with_the_middle_block_last_and_keyed_zero() -> None:
    table = layout.slot_for_layer(BaseModel.SD15)
    assert list(table) == list(range(1, 32, 2))
    assert table[1] == ("input", 1, 0) and table[11] == ("input", 8, 0)
    assert table[13] == ("output", 3, 0) and table[29] == ("output", 11, 0)
    assert table[31] == ("middle", 0, 0)


def test_sdxl_maps_70_layers_in_diffusers_order() -> None:
    table = layout.slot_for_layer(BaseModel.SDXL)
    assert list(table) == list(range(1, 140, 2))
    assert table[1] == ("input", 4, 0) and table[7] == ("input", 5, 1)
    assert table[9] == ("input", 7, 0) and table[47] == ("input", 8, 9)
    assert table[49] == ("output", 0, 0) and table[107] == ("output", 2, 9)
    assert table[109] == ("output", 3, 0) and table[119] == ("output", 5, 1)
    assert table[121] == ("middle", 0, 0) and table[139] == ("middle", 0, 9)


def test_slots_are_unique_and_comfy_keys_try_the_specific_key_first() -> None:
    for base in (BaseModel.SD15, BaseModel.SDXL):
        slots = layout.slots(base)
        assert len(set(slots)) == len(slots)
    assert layout.comfy_keys(layout.Slot("middle", 0, 3)) == (("middle", 0, 3), ("middle", 0))
