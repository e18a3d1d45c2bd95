"""The attn2 replace patch that adds the image term to one cross-attention slot.

ComfyUI calls `patch(q, k, v, extra_options)` with q/k/v already projected by
the host layer and feeds the result to the layer's `to_out`. One `SlotPatch` is
registered per slot; if the slot already held a patch (another IP-Adapter, or
another pack's), that patch computes the text branch and ours adds its term, so
adapters stack instead of replacing each other.

The objects are immutable in meaning: `ImageBranch` memoises the K/V projection
per (device, dtype), which is a pure function of its fields, and `deepcopy`
returns the same object so `ModelPatcher.clone()` shares weights and caches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .attention import AttentionFn, assemble_rows, image_term, schedule_gate
from .model import IPAdapterModel
from .prompt import ImagePrompt

AttnPatch = Callable[[Tensor, Tensor, Tensor, dict], Tensor]


@dataclass(frozen=True, eq=False)
class ImageBranch:
    """One application of an adapter: its weights, prompt, strength and window.

    Attributes:
        adapter: the loaded module (owned by the ModelPatcher(s) in `models`).
        prompt: cond/uncond image tokens.
        weight: lambda of the paper.
        window: (sigma_start, sigma_end) in which the term acts, or None for always.
        layer_weights: multiplier per checkpoint layer index (missing = 1.0; 0 skips the layer).
        models: objects ComfyUI should load and offload with the UNet (ModelPatchers).
    """

    adapter: IPAdapterModel
    prompt: ImagePrompt
    weight: float
    window: tuple[float, float] | None = None
    layer_weights: dict[int, float] = field(default_factory=dict)
    models: tuple[Any, ...] = ()
    _kv: dict = field(default_factory=dict, repr=False)
    _rows: dict = field(default_factory=dict, repr=False)

    def __deepcopy__(self, memo: dict) -> "ImageBranch":
        return self

    def layer_weight(self, index: int) -> float:
        return self.weight * self.layer_weights.get(index, 1.0)

    def kv(self, index: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(k_cond, v_cond, k_uncond, v_uncond) of layer `index`, projected once per device/dtype."""
        key = (device, dtype)
        if key not in self._kv:
            cond = self.adapter.image_kv(self.prompt.cond, device, dtype)
            uncond = self.adapter.image_kv(self.prompt.uncond, device, dtype)
            self._kv[key] = {i: (*cond[i], *uncond[i]) for i in cond}
        return self._kv[key][index]

    def rows(self, index: int, chunks: Sequence[int], batch: int, device: torch.device,
             dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Image K and V laid out like ComfyUI's q batch for layer `index`.

        The layout only changes when the batch composition does, so the last one is
        kept per layer: sampling steps then allocate nothing here.
        """
        key = (tuple(chunks), batch, device, dtype)
        cached = self._rows.get(index)
        if cached is None or cached[0] != key:
            k_cond, v_cond, k_uncond, v_uncond = self.kv(index, device, dtype)
            cached = (key, assemble_rows(chunks, batch, k_cond, k_uncond),
                      assemble_rows(chunks, batch, v_cond, v_uncond))
            self._rows[index] = cached
        return cached[1], cached[2]

    def release_except(self, device: torch.device) -> None:
        """Drop cached K/V that live on other devices (called when ComfyUI moves the patch)."""
        def same(cached: torch.device) -> bool:
            return cached.type == device.type and (device.index is None or cached.index == device.index)

        for key in [k for k in self._kv if not same(k[0])]:
            del self._kv[key]
        for index in [i for i, (key, _, _) in self._rows.items() if not same(key[2])]:
            del self._rows[index]


@dataclass(frozen=True, eq=False)
class SlotPatch:
    """attn2 replace for one slot: `previous(q, k, v) + w * Attn(q, K', V')`.

    `previous` is the patch that held the slot before (it then computes the text
    branch, plus its own additions); None means plain attention with the host's
    backend. `attention` is the backend (ComfyUI's `optimized_attention`).
    """

    branch: ImageBranch
    layer_index: int
    attention: AttentionFn
    previous: AttnPatch | None = None

    def __deepcopy__(self, memo: dict) -> "SlotPatch":
        return self

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, extra_options: dict) -> Tensor:
        heads = extra_options["n_heads"]
        precision = extra_options.get("attn_precision")
        if self.previous is not None:
            out = self.previous(q, k, v, extra_options)
        else:
            out = self.attention(q, k, v, heads, attn_precision=precision, transformer_options=extra_options)
        weight = self.branch.layer_weight(self.layer_index)
        if weight == 0.0:
            return out
        chunks: Sequence[int] = extra_options["cond_or_uncond"]
        batch = q.shape[0] // len(chunks)
        k_ip, v_ip = self.branch.rows(self.layer_index, chunks, batch, q.device, q.dtype)
        term = image_term(q, k_ip, v_ip, heads, self.attention, attn_precision=precision,
                          transformer_options=extra_options)
        if self.branch.window is None:
            return out + term * weight
        gate = schedule_gate(extra_options["sigmas"], *self.branch.window, chunks=len(chunks))
        return out + term * (gate.to(term.dtype) * weight)

    def to(self, device_or_dtype: Any) -> "SlotPatch":
        """Called by ComfyUI on load/offload; moves nothing itself, frees K/V left elsewhere."""
        if isinstance(device_or_dtype, (torch.device, str)):
            self.branch.release_except(torch.device(device_or_dtype))
        if self.previous is not None and hasattr(self.previous, "to"):
            moved = self.previous.to(device_or_dtype)
            if moved is not None and moved is not self.previous:
                object.__setattr__(self, "previous", moved)
        return self

    def models(self) -> list:
        """ModelPatchers ComfyUI must load with the UNet: ours and the wrapped patch's."""
        inner = self.previous.models() if self.previous is not None and hasattr(self.previous, "models") else []
        return list(self.branch.models) + list(inner)


def slot_patches(
    branch: ImageBranch,
    slots_by_layer: dict[int, Any],
    existing: Callable[[Any], AttnPatch | None],
    attention: AttentionFn,
) -> list[tuple[Any, SlotPatch]]:
    """One SlotPatch per slot, each wrapping whatever `existing(slot)` already holds.

    Layers whose multiplier is 0 get no patch at all (the slot keeps what it had).
    """
    patches = []
    for index, slot in slots_by_layer.items():
        if branch.layer_weight(index) == 0.0:
            continue
        patches.append((slot, SlotPatch(branch, index, attention, existing(slot))))
    return patches
