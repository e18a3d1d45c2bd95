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

from .attention import (
    AttentionFn,
    EmbedsScaling,
    assemble_rows,
    image_term,
    scale_kv,
    schedule_gate,
)
from .devices import same_device
from .layout_cache import LayoutCache
from .masking import MaskCache
from .model import IPAdapterModel
from .per_latent import latent_factor, latent_indices, pick
from .prompt import ImagePrompt
from .step_schedule import WeightSchedule

AttnPatch = Callable[[Tensor, Tensor, Tensor, dict], Tensor]


@dataclass(frozen=True)
class StepGate:
    """What the schedule window asks of one step.

    `skip`: no row is in the window, the layer adds nothing. `factor`: per-row
    1/0 ([rows, 1, 1]) when only some rows are in it, or when the rows live on an
    accelerator, where reading the sigmas back would stall the GPU. Neither: every
    row is in the window.
    """

    skip: bool = False
    factor: Tensor | None = None


#: Every row acts: nothing to multiply.
ALWAYS = StepGate()


@dataclass(frozen=True, eq=False)
class ImageBranch:
    """One application of an adapter: its weights, prompt, strength, window, layers and mask.

    Attributes:
        adapter: the loaded module (owned by the ModelPatcher(s) in `models`).
        prompt: cond/uncond image tokens.
        weight: lambda of the paper.
        window: (sigma_start, sigma_end) in which the term acts, or None for always.
        layer_weights: multiplier per checkpoint layer index (missing = 1.0; 0 skips the layer).
        models: objects ComfyUI should load and offload with the UNet (ModelPatchers).
        embeds_scaling: where the weight enters (V only = the paper; see `EmbedsScaling`).
        inverted: layers whose cond rows get no image term and whose uncond rows get the
            reference (the "precise" weight types: guidance then pushes away from it).
        mask: [1 or batch, H, W] float32 on the CPU; the image term acts where it is 1.
        schedule: the weight over the steps (`step_schedule`); None = `weight` at every step.
        latent_weights: a multiplier per latent (frame), or None (see `per_latent`).
    """

    adapter: IPAdapterModel
    prompt: ImagePrompt
    weight: float
    window: tuple[float, float] | None = None
    layer_weights: dict[int, float] = field(default_factory=dict)
    models: tuple[Any, ...] = ()
    embeds_scaling: EmbedsScaling = EmbedsScaling.V_ONLY
    inverted: frozenset[int] = frozenset()
    mask: Tensor | None = None
    schedule: WeightSchedule | None = None
    latent_weights: tuple[float, ...] | None = None
    _kv: dict = field(default_factory=dict, repr=False)
    _rows: LayoutCache = field(default_factory=LayoutCache, repr=False)
    _gate: dict = field(default_factory=dict, repr=False)
    _masks: MaskCache | None = field(default=None, repr=False)
    _factors: LayoutCache = field(default_factory=LayoutCache, repr=False)

    def __post_init__(self) -> None:
        if self.mask is not None and self._masks is None:
            object.__setattr__(self, "_masks", MaskCache(self.mask))

    def __deepcopy__(self, memo: dict) -> ImageBranch:
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

    def frames(self, batch: int, extra_options: dict) -> tuple[int, ...] | None:
        """The prompt rows of this call's latents when the prompt holds one reference per latent (`per_latent`)."""
        return latent_indices(self.prompt.cond.shape[0], batch, extra_options,
                              "image prompt rows (one reference per latent)")

    def rows(self, index: int, chunks: Sequence[int], batch: int, device: torch.device,
             dtype: torch.dtype, frames: tuple[int, ...] | None = None) -> tuple[Tensor, Tensor]:
        """Image K and V laid out like ComfyUI's q batch for layer `index`, the weight folded in.

        Inverted layers swap in (zeros, reference) for (cond, uncond). The layer's
        weight goes into K/V here (`scale_kv`; for V only it multiplies V, which
        equals weighting the output and saves a pass over it). Held per layout
        (`LayoutCache`), so sampling steps allocate nothing here.
        """
        return self._rows.get((tuple(chunks), batch, device, dtype, frames), index,
                              lambda: self._build_rows(index, chunks, batch, device, dtype, frames))

    def _build_rows(self, index: int, chunks: Sequence[int], batch: int, device: torch.device,
                    dtype: torch.dtype, frames: tuple[int, ...] | None = None) -> tuple[Tensor, Tensor]:
        k_cond, v_cond, k_uncond, v_uncond = (pick(t, frames) for t in self.kv(index, device, dtype))
        if index in self.inverted:  # projection of zero tokens is zero: the adapter's K/V have no bias
            k_uncond, v_uncond = k_cond, v_cond
            k_cond, v_cond = torch.zeros_like(k_cond), torch.zeros_like(v_cond)
        return scale_kv(assemble_rows(chunks, batch, k_cond, k_uncond),
                        assemble_rows(chunks, batch, v_cond, v_uncond),
                        self.layer_weight(index), self.embeds_scaling)

    def gate(self, sigmas: Tensor, chunks: int, device: torch.device, dtype: torch.dtype) -> StepGate:
        """The schedule window for this step, decided once per step (ComfyUI passes one sigmas tensor to all layers).

        Sigmas on the CPU are read directly (no device to wait for), so a step outside
        the window skips the image attention altogether. On an accelerator the gate
        stays a tensor that multiplies the term: no `.item()`, no sync.
        """
        if self.window is None:
            return ALWAYS
        last = self._gate.get("last")
        if last is None or last[0] is not sigmas or last[1] != (chunks, device, dtype):
            factor = schedule_gate(sigmas, *self.window, chunks=chunks)
            if factor.device.type == "cpu" and bool(factor.all()):
                step = ALWAYS
            elif factor.device.type == "cpu" and not bool(factor.any()):
                step = StepGate(skip=True)
            else:
                step = StepGate(factor=factor.to(device=device, dtype=dtype))
            last = (sigmas, (chunks, device, dtype), step)
            self._gate["last"] = last
        return last[2]

    def mask_rows(self, extra_options: dict, tokens: int, chunks: int, batch: int, device: torch.device,
                  dtype: torch.dtype) -> Tensor:
        """The mask on this layer's token grid, [chunks * batch, tokens, 1], cached per layout.

        With several masks, a context window picks the masks of its frames (`per_latent`).
        """
        assert self._masks is not None and self.mask is not None
        frames = latent_indices(self.mask.shape[0], batch, extra_options, "masks (one per latent)")
        return self._masks.get(extra_options["original_shape"], tokens, chunks, batch, device, dtype, frames)

    def modulation(self, extra_options: dict, chunks: int, batch: int, device: torch.device,
                   dtype: torch.dtype) -> Tensor | None:
        """Weight schedule x per-latent weights as one factor per q row [chunks * batch, 1, 1]; None if neither."""
        factor = None
        if self.schedule is not None:
            factor = self.schedule.factor(extra_options["sigmas"], extra_options, chunks, device, dtype)
        if self.latent_weights is not None:
            weights = self.latent_weights
            frames = latent_indices(len(weights), batch, extra_options, "per-latent weights")
            per_latent = self._factors.get((chunks, batch, device, dtype, frames), 0,
                                           lambda: latent_factor(weights, chunks, batch, extra_options, device, dtype))
            factor = per_latent if factor is None else factor * per_latent
        return factor

    def release_except(self, device: torch.device) -> None:
        """Drop cached K/V that live on other devices (called when ComfyUI moves the patch)."""
        for key in [k for k in self._kv if not same_device(k[0], device)]:
            del self._kv[key]
        self._rows.drop(lambda layout: not same_device(layout[2], device))
        self._gate.clear()
        self._factors.drop(lambda layout: not same_device(layout[2], device))
        if self.schedule is not None:
            self.schedule.release_except(device)
        if self._masks is not None:
            self._masks.release_except(device)


@dataclass(frozen=True, eq=False)
class SlotPatch:
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
        if gate.factor is not None:
            term = term.mul_(gate.factor) if inplace else term * gate.factor
        modulation = branch.modulation(extra_options, len(chunks), batch, q.device, term.dtype)
        if modulation is not None:
            term = term.mul_(modulation) if inplace else term * modulation
        if branch.mask is not None:
            mask = branch.mask_rows(extra_options, q.shape[1], len(chunks), batch, q.device, term.dtype)
            term = term.mul_(mask) if inplace else term * mask
        return out.add_(term) if inplace and self._owns_output else out + term

    def to(self, device_or_dtype: Any) -> SlotPatch:
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
