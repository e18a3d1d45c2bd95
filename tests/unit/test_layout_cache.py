"""LayoutCache: one value per (layout, item), a few recent layouts kept."""

from __future__ import annotations

import pytest
from ipadapter_pack.ip_adapter.layout_cache import LayoutCache


def test_values_are_made_once_per_layout_and_item() -> None:
    made = []
    cache: LayoutCache[object] = LayoutCache(layouts=2)

    def make(tag: str):
        return lambda: made.append(tag) or object()

    a1 = cache.get("batched", 1, make("a1"))
    assert cache.get("batched", 1, make("again")) is a1
    b1 = cache.get("cond only", 1, make("b1"))
    assert cache.get("batched", 1, make("again")) is a1 and cache.get("cond only", 1, make("again")) is b1
    assert made == ["a1", "b1"]
    cache.get("third", 1, make("c1"))  # the layout stored first goes, with its items
    assert cache.held_layouts() == ["cond only", "third"]
    assert cache.get("batched", 1, make("a1 again")) is not a1


def test_drop_forgets_the_chosen_layouts() -> None:
    cache: LayoutCache[int] = LayoutCache()
    for device in ("cpu", "cuda", "cpu2"):
        cache.get((device, 2), 0, lambda: 1)
    cache.drop(lambda layout: layout[0].startswith("cpu"))
    assert cache.held_layouts() == [("cuda", 2)]
    cache.clear()
    assert cache.held_layouts() == []
    with pytest.raises(ValueError):
        LayoutCache(layouts=0)
