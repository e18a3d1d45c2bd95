"""What every family's per-layer patch shares: it wraps whatever held its hook point before.

A patch (UNet attn2 slot, Flux double block, SD3.5 joint block) keeps the patch
that was registered there before it (`previous`: another IP-Adapter, another
pack's, or None) and calls it, so adapters stack instead of replacing each other.
ComfyUI moves patches with `.to()` on load/offload and loads the ModelPatchers
that `.models()` lists with the diffusion model; both must reach the wrapped
patch too, and a patch that clones share must never be changed in place.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch


def move_previous(previous: Any, device_or_dtype: Any) -> Any:
    """What a wrapped patch's `.to()` returns (itself when it has none or returns None)."""
    if previous is None or not hasattr(previous, "to"):
        return previous
    moved = previous.to(device_or_dtype)
    return previous if moved is None else moved


class WrapsPrevious:
    """Mixin for frozen dataclass patches with a `branch` (the application) and a `previous` (the wrapped patch)."""

    branch: Any
    previous: Any

    def release_for(self, device_or_dtype: Any) -> None:
        """Free what the branch holds for devices other than the one ComfyUI moves to."""
        if isinstance(device_or_dtype, (torch.device, str)):
            self.branch.release_except(torch.device(device_or_dtype))

    def to(self, device_or_dtype: Any) -> Any:
        """Called by ComfyUI on load/offload (it stores what this returns).

        Moves nothing itself (the adapter's weights move with `models`). If the
        wrapped patch returns a new object, so does this: a patch that clones
        share is never changed.
        """
        self.release_for(device_or_dtype)
        moved = move_previous(self.previous, device_or_dtype)
        return self if moved is self.previous else replace(self, previous=moved)  # type: ignore[type-var]

    def models(self) -> list:
        """ModelPatchers ComfyUI must load with the diffusion model: ours and the wrapped patch's."""
        inner = self.previous.models() if self.previous is not None and hasattr(self.previous, "models") else []
        return list(self.branch.models) + list(inner)
