"""The SD3.5 patch objects ComfyUI calls: a joint-block replace and the attention override it installs.

`JointBlockPatch` is registered under `patches_replace["dit"][("double_block", i)]`
(ComfyUI's MMDiT calls it with the block's inputs and `original_block`). It does
not re-run any of the block's projections: it hands the block a copy of the
transformer options carrying `optimized_attention_override` (the hook ComfyUI's
`wrap_attn` offers), which receives the block's joint Q/K/V exactly as the
block computed them, runs the block's attention, and adds the adapter's term to
the image-stream part of the result. The block's `post_attention` then applies
its output projection, gate and MLP to the sum, as the reference does.

A replace already on the block (another adapter, another pack) is wrapped: it
runs in our place and its `original_block` call carries our override; an
override already in the options is wrapped the same way, so adapters stack.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..attention import schedule_gate
from ..families.wrapping import WrapsPrevious
from ..patch import ALWAYS, StepGate
from .attention import adapter_query, feature_rows, joint_image_term, mask_tokens, step_timesteps
from .model import SD3Adapter
from .prompt import SD3ImagePrompt


class StepCache:
    """What one sampling step shares between blocks: the gate and the resampler's tokens.

    Keyed by the identity of ComfyUI's `sigmas` tensor (one per model call) and
    the batch layout; a new step drops the old entries. The only mutable part of
    a branch, named so that clones knowingly share it.
    """

    def __init__(self) -> None:
        self._sigmas: Tensor | None = None
        self._entries: dict[Any, Any] = {}
        self.features: dict[Any, tuple[Tensor, Tensor]] = {}  # the prompt's features per (device, dtype), kept across steps
        self.resampler_runs = 0  # read by tests: one run per step and layout

    def get(self, sigmas: Tensor, key: Any, make: Any) -> Any:
        if self._sigmas is not sigmas:
            self._sigmas, self._entries = sigmas, {}
        if key not in self._entries:
            self._entries[key] = make()
        return self._entries[key]

    def clear(self) -> None:
        self._sigmas, self._entries, self.features = None, {}, {}


@dataclass(frozen=True, eq=False)
class SD3Branch:
    """One application of an SD3.5 adapter.

    Attributes:
        adapter: the loaded module (owned by the ModelPatcher(s) in `models`).
        prompt: cond/uncond SigLIP features.
        weight: the scale of the reference (diffusers' `scale`).
        ratios: per joint block, (norm_q gain / host Q gain, norm_k gain / host K gain).
        host_normed: whether the host block RMS-normalises Q and K (SD3.5: yes).
        multiplier: ComfyUI's sigma -> timestep factor (flow models: 1000).
        window: (sigma_start, sigma_end) or None for always.
        block_weights: multiplier per joint block (missing = 1.0).
        mask: [1 or batch, H, W] float32 on the CPU.
    """

    adapter: SD3Adapter
    prompt: SD3ImagePrompt
    weight: float
    ratios: tuple[tuple[Tensor, Tensor], ...]
    host_normed: bool = True
    multiplier: float = 1000.0
    window: tuple[float, float] | None = None
    block_weights: dict[int, float] = field(default_factory=dict)
    models: tuple[Any, ...] = ()
    mask: Tensor | None = None
    cache: StepCache = field(default_factory=StepCache, repr=False)

    def __deepcopy__(self, memo: dict) -> SD3Branch:
        return self

    def block_weight(self, index: int) -> float:
        return self.weight * self.block_weights.get(index, 1.0)

    #: The name the family seam (`families.seam.make_patches`) asks for.
    layer_weight = block_weight

    def gate(self, sigmas: Tensor, chunks: int, device: torch.device, dtype: torch.dtype) -> StepGate:
        """The start/end window for this step; read on the CPU only (no GPU sync), else a per-row factor."""
        if self.window is None:
            return ALWAYS

        def make() -> StepGate:
            factor = schedule_gate(sigmas, *self.window, chunks=chunks)
            if factor.device.type == "cpu":
                return ALWAYS if bool(factor.all()) else StepGate(skip=True) if not bool(factor.any()) else \
                    StepGate(factor=factor.to(device=device, dtype=dtype))
            return StepGate(factor=factor.to(device=device, dtype=dtype))

        return self.cache.get(sigmas, ("gate", chunks, device, dtype), make)

    def tokens(self, sigmas: Tensor, chunks: Sequence[int], batch: int) -> tuple[Tensor, Tensor]:
        """Image tokens [chunks*batch, n*Q, C] and time embeddings [chunks*batch, D], once per step and layout."""

        def make() -> tuple[Tensor, Tensor]:
            self.cache.resampler_runs += 1
            images = self.prompt.images
            weights = next(self.adapter.parameters())
            key = (weights.device, weights.dtype)
            if key not in self.cache.features:  # copied to the adapter's device once, not every step
                self.cache.features[key] = (self.prompt.cond.to(device=weights.device, dtype=weights.dtype),
                                            self.prompt.uncond.to(device=weights.device, dtype=weights.dtype))
            features = feature_rows(chunks, batch, *self.cache.features[key])
            timesteps = step_timesteps(sigmas, len(chunks), images, self.multiplier)
            tokens, time_emb = self.adapter.tokens(features, timesteps)
            rows = len(chunks) * batch
            return tokens.reshape(rows, -1, tokens.shape[-1]), time_emb[::images]

        return self.cache.get(sigmas, ("tokens", tuple(chunks), batch), make)

    def release(self) -> None:
        self.cache.clear()


@dataclass(frozen=True, eq=False)
class JointAttentionOverride:
    """`optimized_attention_override` for one call of one joint block: adds the image term to the image part."""

    patch: JointBlockPatch
    text_tokens: int
    image_tokens: int
    gate: StepGate
    chunks: tuple[int, ...]
    sigmas: Tensor
    previous: Any = None

    def __call__(self, func: Any, *args: Any, **kwargs: Any) -> Tensor:
        out = self.previous(func, *args, **kwargs) if self.previous is not None else func(*args, **kwargs)
        q, k, v = args[:3]
        heads = args[3] if len(args) > 3 else kwargs["heads"]
        if q.shape[1] != self.text_tokens + self.image_tokens or kwargs.get("skip_reshape"):
            return out  # not this block's joint attention (e.g. SD3.5 Medium's second image attention)
        return self.patch.add_term(out, q, k, v, heads, func, self)


def _plain(func: Any) -> Any:
    def attention(q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
        return func(q, k, v, heads)
    return attention


@dataclass(frozen=True, eq=False)
class JointBlockPatch(WrapsPrevious):
    """`patches_replace["dit"][("double_block", index)]` for one joint block."""

    branch: SD3Branch
    index: int
    previous: Any = None

    def __deepcopy__(self, memo: dict) -> JointBlockPatch:
        return self

    @property
    def weight(self) -> float:
        return self.branch.block_weight(self.index)

    def __call__(self, args: dict, extra: dict) -> dict:
        options = args["transformer_options"]
        chunks = tuple(options["cond_or_uncond"])
        sigmas = options["sigmas"]
        img = args["img"]
        gate = self.branch.gate(sigmas, len(chunks), img.device, img.dtype)
        if not gate.skip and self.weight != 0.0:
            override = JointAttentionOverride(self, args["txt"].shape[1], img.shape[1], gate, chunks, sigmas,
                                              options.get("optimized_attention_override"))
            args = {**args, "transformer_options": {**options, "optimized_attention_override": override}}
        if self.previous is not None:
            return self.previous(args, extra)
        return extra["original_block"](args)

    def add_term(self, out: Tensor, q: Tensor, k: Tensor, v: Tensor, heads: int, func: Any,
                 call: JointAttentionOverride) -> Tensor:
        """out[:, text:] += w * gate * mask * Attn(norm_q(Q_img), [norm_k(K_img); K_ip], [V_img; V_ip])."""
        branch, text = self.branch, call.text_tokens
        batch = q.shape[0] // len(call.chunks)
        tokens, time_emb = branch.tokens(call.sigmas, call.chunks, batch)
        k_ip, v_ip = branch.adapter.block_kv(self.index, tokens, time_emb, q.dtype)
        k_ip, v_ip = k_ip.to(q.device), v_ip.to(q.device)
        ratio_q, ratio_k = branch.ratios[self.index]
        # ComfyUI's MMDiT hands V as [B, L, heads, head_dim] (Q and K flattened): view all three as [B, L, H*d].
        q, k, v = (t.flatten(2) for t in (q, k, v))
        q_img = adapter_query(q[:, text:], ratio_q.to(q.device), heads, branch.host_normed)
        k_img = adapter_query(k[:, text:], ratio_k.to(q.device), heads, branch.host_normed)
        term = joint_image_term(q_img, k_img, v[:, text:], k_ip, v_ip, heads, _plain(func))
        term = term * self.weight
        if call.gate.factor is not None:
            term = term * call.gate.factor
        if branch.mask is not None:
            term = term * branch.cache.get(call.sigmas, ("mask", term.shape[1], call.chunks, batch, term.device,
                                                         term.dtype),
                                           lambda: mask_tokens(branch.mask, term.shape[1], len(call.chunks), batch,
                                                               term.device, term.dtype))
        if torch.is_grad_enabled():
            return torch.cat((out[:, :text], out[:, text:] + term), dim=1)
        out[:, text:] += term
        return out

    def release_for(self, device_or_dtype: Any) -> None:
        """Drops the tokens held for the last step; the weights move with `models`."""
        self.branch.release()
