"""A memo keyed by batch layout that keeps a few layouts, not just the last one.

ComfyUI batches the cond and uncond rows into one UNet call when memory allows
and sends them in separate calls when it does not (low VRAM, area conditioning,
different cond sizes). A cache that kept only the last layout would then be
rebuilt on every call; this one keeps the most recent few, so both ways of
calling reuse their tensors and sampling steps allocate nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class LayoutCache(Generic[T]):
    """`get(layout, item, make)` returns `make()` once per (layout, item) while the layout stays recent.

    When a new layout arrives and `layouts` are already held, the layout stored
    first is dropped with all its items. Values are never mutated by the cache.
    """

    def __init__(self, layouts: int = 4) -> None:
        if layouts < 1:
            raise ValueError("a LayoutCache must keep at least one layout")
        self.layouts = layouts
        self._entries: dict[Hashable, dict[Hashable, T]] = {}

    def get(self, layout: Hashable, item: Hashable, make: Callable[[], T]) -> T:
        entries = self._entries.get(layout)
        if entries is None:
            if len(self._entries) >= self.layouts:
                del self._entries[next(iter(self._entries))]
            entries = self._entries[layout] = {}
        value = entries.get(item)
        if value is None:
            value = entries[item] = make()
        return value

    def held_layouts(self) -> list[Hashable]:
        """The layouts held now, oldest first."""
        return list(self._entries)

    def drop(self, unwanted: Callable[[Hashable], bool]) -> None:
        """Forget every layout for which `unwanted(layout)` is true (e.g. those on another device)."""
        for layout in [key for key in self._entries if unwanted(key)]:
            del self._entries[layout]

    def clear(self) -> None:
        self._entries.clear()
