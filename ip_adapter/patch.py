"""The shared patch machinery: one application of an adapter, whatever the model family.

`ImageBranch` is what every family's patch reads: the adapter, the image prompt,
the weight and the `LayerPlan`, the schedule window, the mask, and the image K/V
laid out like ComfyUI's batch (cond/uncond chunks), memoised in one
`BranchCache`. The families (`ip_adapter.families.unet`: attn2 slots;
`ip_adapter.families.flux`: DiT blocks) only decide *where* the term is computed
and how it is added; the rows, the gate and the mask come from here, so a rule
fixed here holds for every family.

The branch is immutable in meaning: the cache holds pure functions of its
fields (per device, dtype and batch layout), and `deepcopy` returns the same
object so `ModelPatcher.clone()` shares weights and caches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from .attention import EmbedsScaling, assemble_rows, scale_kv, schedule_gate
from .devices import same_device
from .layout_cache import LayoutCache
from .masking import MaskCache
from .per_latent import latent_factor, latent_indices, pick
from .prompt import ImagePrompt
from .spec import AdapterSpec
from .step_schedule import WeightSchedule
from .weighting import LayerPlan


class AdapterModule(Protocol):
    """What a branch needs of a loaded adapter, whichever family's module it is."""

    spec: AdapterSpec

    def project(self, features: Tensor) -> Tensor:
        """Encoder features -> image tokens [n, T, C], float32."""
        ...

    def image_kv(self, tokens: Tensor, device: torch.device, dtype: torch.dtype) -> dict[int, tuple[Tensor, Tensor]]:
        """K and V of `tokens` [n, T, C] for every layer, [n, T, width] each, in `dtype` on `device`."""
        ...


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


class BranchCache:
    """Everything an `ImageBranch` memoises, in one named place (the branch itself stays frozen).

    Attributes:
        kv: (device, dtype) -> layer -> (k_cond, v_cond, k_uncond, v_uncond): the adapter's
            projection of the prompt, done once per apply and device/dtype.
        rows: those K/V laid out like ComfyUI's batch, the weight folded in, per layout.
        gate: the last step's schedule decision ("last" -> (sigmas, layout, StepGate)).
        masks: the mask on each token grid, per layout (None without a mask).
        factors: per-latent weights as a factor on the q rows, per layout (`per_latent`).
        window_kv: K/V of a context window's prompt rows only, for the last few windows.
    """

    def __init__(self, mask: Tensor | None = None, where: str = "attn_mask") -> None:
        self.kv: dict[tuple[torch.device, torch.dtype], dict[int, tuple[Tensor, Tensor, Tensor, Tensor]]] = {}
        self.rows: LayoutCache[tuple[Tensor, Tensor]] = LayoutCache()
        self.gate: dict[str, tuple[Tensor, tuple, StepGate]] = {}
        self.masks = MaskCache(mask, where) if mask is not None else None
        self.factors: LayoutCache[Tensor] = LayoutCache()
        self.window_kv: LayoutCache[dict[int, tuple[Tensor, Tensor, Tensor, Tensor]]] = LayoutCache()

    def release_except(self, device: torch.device) -> None:
        """Drop what lives on other devices (called when ComfyUI moves the patch)."""
        for key in [k for k in self.kv if not same_device(k[0], device)]:
            del self.kv[key]
        self.rows.drop(lambda layout: not same_device(layout[2], device))
        self.gate.clear()
        self.factors.drop(lambda layout: not same_device(layout[2], device))
        self.window_kv.drop(lambda layout: not same_device(layout[0], device))
        if self.masks is not None:
            self.masks.release_except(device)


@dataclass(frozen=True, eq=False)
class ImageBranch:
    """One application of an adapter: its weights, prompt, strength, window, layers and mask.

    Attributes:
        adapter: the loaded module (owned by the ModelPatcher(s) in `models`).
        prompt: cond/uncond image tokens.
        weight: lambda of the paper.
        window: (sigma_start, sigma_end) in which the term acts, or None for always.
        plan: multiplier per checkpoint layer (missing = 1.0; 0 skips the layer) and the
            inverted layers, whose cond rows get no image term and whose uncond rows get
            the reference (the "precise" weight types: guidance then pushes away from it).
        models: objects ComfyUI should load and offload with the model (ModelPatchers).
        embeds_scaling: where the weight enters (V only = the paper; see `EmbedsScaling`).
        mask: [1 or batch, H, W] float32 on the CPU; the image term acts where it is 1.
        where: names the node input in messages raised while sampling (the mask's batch check).
        schedule: the weight over the steps (`step_schedule`); None = `weight` at every step.
        latent_weights: a multiplier per latent (frame), or None (see `per_latent`).
        cache: the memoised K/V, rows, gate and mask rows (`BranchCache`).
    """

    adapter: AdapterModule
    prompt: ImagePrompt
    weight: float
    window: tuple[float, float] | None = None
    plan: LayerPlan = field(default_factory=LayerPlan)
    models: tuple[Any, ...] = ()
    embeds_scaling: EmbedsScaling = EmbedsScaling.V_ONLY
    mask: Tensor | None = None
    where: str = "attn_mask"
    schedule: WeightSchedule | None = None
    latent_weights: tuple[float, ...] | None = None
    cache: BranchCache = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cache", BranchCache(self.mask, self.where))

    def __deepcopy__(self, memo: dict) -> ImageBranch:
        return self

    def layer_weight(self, index: int) -> float:
        return self.weight * self.plan.multiplier(index)

    def kv(self, index: int, device: torch.device, dtype: torch.dtype,
           frames: tuple[int, ...] | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(k_cond, v_cond, k_uncond, v_uncond) of layer `index`, projected once per device/dtype.

        `frames` (a context window's prompt rows): only those rows are projected, and kept for a few
        windows (`LayoutCache`), so K/V memory follows the window, not the whole batch of references.
        """
        if frames is not None:
            return self.cache.window_kv.get((device, dtype, frames), 0, lambda: self._project(
                pick(self.prompt.cond, frames), pick(self.prompt.uncond, frames), device, dtype))[index]
        key = (device, dtype)
        cached = self.cache.kv
        if key not in cached:
            cached[key] = self._project(self.prompt.cond, self.prompt.uncond, device, dtype)
        return cached[key][index]

    def _project(self, cond_tokens: Tensor, uncond_tokens: Tensor, device: torch.device,
                 dtype: torch.dtype) -> dict[int, tuple[Tensor, Tensor, Tensor, Tensor]]:
        cond = self.adapter.image_kv(cond_tokens, device, dtype)
        uncond = self.adapter.image_kv(uncond_tokens, device, dtype)
        return {i: (*cond[i], *uncond[i]) for i in cond}

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
        return self.cache.rows.get((tuple(chunks), batch, device, dtype, frames), index,
                                   lambda: self._build_rows(index, chunks, batch, device, dtype, frames))

    def _build_rows(self, index: int, chunks: Sequence[int], batch: int, device: torch.device,
                    dtype: torch.dtype, frames: tuple[int, ...] | None = None) -> tuple[Tensor, Tensor]:
        k_cond, v_cond, k_uncond, v_uncond = self.kv(index, device, dtype, frames)
        if index in self.plan.inverted:  # projection of zero tokens is zero: the adapter's K/V have no bias
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
        last = self.cache.gate.get("last")
        if last is None or last[0] is not sigmas or last[1] != (chunks, device, dtype):
            factor = schedule_gate(sigmas, *self.window, chunks=chunks)
            if factor.device.type == "cpu" and bool(factor.all()):
                step = ALWAYS
            elif factor.device.type == "cpu" and not bool(factor.any()):
                step = StepGate(skip=True)
            else:
                step = StepGate(factor=factor.to(device=device, dtype=dtype))
            last = (sigmas, (chunks, device, dtype), step)
            self.cache.gate["last"] = last
        return last[2]

    def mask_rows(self, extra_options: dict, tokens: int, chunks: int, batch: int, device: torch.device,
                  dtype: torch.dtype) -> Tensor:
        """The mask on this layer's token grid, [chunks * batch, tokens, 1], cached per layout."""
        frames = self.mask_frames(batch, extra_options)
        return self.mask_grid(extra_options["original_shape"], tokens, chunks, batch, device, dtype, frames)

    def mask_frames(self, batch: int, extra_options: dict) -> tuple[int, ...] | None:
        """Which masks serve this call's latents (a context window's frames), None for all (`per_latent`)."""
        assert self.mask is not None
        return latent_indices(self.mask.shape[0], batch, extra_options, "masks", self.where)

    def mask_grid(self, latent_shape: tuple[int, ...] | list[int], tokens: int, chunks: int, batch: int,
                  device: torch.device, dtype: torch.dtype, frames: tuple[int, ...] | None = None) -> Tensor:
        """The mask resized to the token grid of a latent of `latent_shape`, [chunks * batch, tokens, 1].

        With several masks, a context window picks the masks of its frames (`frames`, see `per_latent`).
        """
        assert self.cache.masks is not None and self.mask is not None, "mask_grid needs a branch with a mask"
        return self.cache.masks.get(latent_shape, tokens, chunks, batch, device, dtype, frames)

    def scale_term(self, term: Tensor, gate: StepGate, options: dict, chunks: int, batch: int,
                   inplace: bool) -> Tensor:
        """term x the step gate's per-row factor x the schedule / per-latent modulation (every family's tail)."""
        if gate.factor is not None:
            term = term.mul_(gate.factor) if inplace else term * gate.factor
        modulation = self.modulation(options, chunks, batch, term.device, term.dtype)
        if modulation is not None:
            term = term.mul_(modulation) if inplace else term * modulation
        return term

    def modulation(self, extra_options: dict, chunks: int, batch: int, device: torch.device,
                   dtype: torch.dtype) -> Tensor | None:
        """Weight schedule x per-latent weights as one factor per q row [chunks * batch, 1, 1]; None if neither.

        Every family multiplies its image term by this (after the gate), so both features hold for all.
        """
        factor = None
        if self.schedule is not None:
            factor = self.schedule.factor(extra_options["sigmas"], extra_options, chunks, device, dtype)
        if self.latent_weights is not None:
            weights = self.latent_weights
            frames = latent_indices(len(weights), batch, extra_options, "per-latent weights")
            per_latent = self.cache.factors.get(
                (chunks, batch, device, dtype, frames), 0,
                lambda: latent_factor(weights, chunks, batch, extra_options, device, dtype))
            factor = per_latent if factor is None else factor * per_latent
        return factor

    def release_except(self, device: torch.device) -> None:
        """Drop cached K/V that live on other devices (called when ComfyUI moves the patch)."""
        self.cache.release_except(device)
        if self.schedule is not None:
            self.schedule.release_except(device)


