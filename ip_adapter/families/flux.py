"""Flux family: the XLabs image term in each double-stream block, through `patches_replace["dit"]`.

The reference (diffusers `FluxIPAdapterAttnProcessor`, XLabs `IPDoubleStreamBlockProcessor`):

    ip = scale * Attn(Q_img, K_ip, V_ip)        Q_img: the block's image query after QK-norm, before RoPE
    img_out = block(img, txt, ...)[img] + ip    added to the image stream after the block (no gate, no proj)

K_ip/V_ip = Linear(tokens) per block (with bias), the host's heads and 1/sqrt(head_dim), no mask.

How the query is had without recomputing the block's projections: ComfyUI's
block replace (`("double_block", i)`) sees only the block's inputs. Our replace
calls the original block with a *copy* of `transformer_options` whose
`optimized_attention_override` (a public ComfyUI hook, honoured by every
attention backend through `wrap_attn`) hands us the block's own q, k, v on their
way into the joint attention, then calls the backend (or the override the user
already had) unchanged. q there is [B, H, txt+img, D] after QK-norm *and* RoPE;
RoPE is a rotation per position pair, so the image rows are rotated back with the
transpose of ComfyUI's own rotation matrices (`pe`, passed to the block) -
2 multiply-adds per element, exact up to rounding. The term is computed there
and added to the block's image output. Nothing else of the block runs twice,
K/V of the image tokens are projected once per apply (`ImageBranch.kv`).

A replace that another pack (or an earlier apply) registered on the block is
wrapped: it runs first and our term wraps the block it calls, so both act.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..attention import AttentionFn, sdpa_attention
from ..patch import ImageBranch, StepGate
from ..spec import AdapterSpec, ModelFamily
from .seam import Backends, HookPoint
from .wrapping import WrapsPrevious

BlockReplace = Callable[[dict, dict], dict]

#: ComfyUI's transformer_options key for a replacement attention function.
OVERRIDE_KEY = "optimized_attention_override"


def point(index: int) -> HookPoint:
    """The dit replace key ComfyUI's Flux looks up for double block `index`."""
    key = ("double_block", index)
    return HookPoint("dit", key, (key,))


def unrope(x: Tensor, pe: Tensor) -> Tensor:
    """Undo ComfyUI's RoPE on x [B, H, L, D] with its rotation matrices pe [B|1, 1, L, D/2, 2, 2].

    ComfyUI rotates each pair (x0, x1) by R = pe[..., :, :] (`apply_rope1`:
    out = R[:, 0] x0 + R[:, 1] x1, in float32). R is orthogonal, so R^T undoes it:
    x0 = R00 y0 + R10 y1, x1 = R01 y0 + R11 y1. Computed in float32, returned in x's dtype.
    """
    y = x.float().reshape(*x.shape[:-1], -1, 2)
    y0, y1 = y[..., 0], y[..., 1]
    x0 = pe[..., 0, 0] * y0 + pe[..., 1, 0] * y1
    x1 = pe[..., 0, 1] * y0 + pe[..., 1, 1] * y1
    return torch.stack((x0, x1), dim=-1).reshape(x.shape).to(x.dtype)


def flux_image_attention(q_img: Tensor, k_ip: Tensor, v_ip: Tensor, attention: AttentionFn,
                         **kwargs: object) -> Tensor:
    """Attn(q_img, K_ip, V_ip): q_img [B, H, L, D], K/V [B, T, H*D] -> [B, L, H*D] (ComfyUI's skip_reshape form)."""
    batch, heads, _, dim = q_img.shape
    k = k_ip.view(batch, -1, heads, dim).transpose(1, 2)
    v = v_ip.view(batch, -1, heads, dim).transpose(1, 2)
    return attention(q_img, k, v, heads, skip_reshape=True, **kwargs)


@dataclass
class _Tap:
    """The override for one block call: computes the term from the block's q, then runs the attention as before.

    Made per call (not shared), so the term it holds belongs to this call only.
    """

    patch: DoubleBlockPatch
    args: dict
    gate: StepGate
    outer: dict  # the transformer_options without our override (the image attention runs with these)
    previous: Callable[..., Tensor] | None
    term: Tensor | None = None

    def __call__(self, func: Callable[..., Tensor], *args: Any, **kwargs: Any) -> Tensor:
        q = args[0] if args else kwargs["q"]
        txt, img = self.args["txt"].shape[1], self.args["img"].shape[1]
        if self.term is None and q.ndim == 4 and q.shape[2] == txt + img:
            self.term = self.patch.term(q[:, :, txt:], self.args["pe"][:, :, txt:], self.gate, self.outer)
        if self.previous is not None:
            return self.previous(func, *args, **kwargs)
        return func(*args, **kwargs)


@dataclass(frozen=True, eq=False)
class DoubleBlockPatch(WrapsPrevious):
    """`("double_block", i)` replace: the block (or the replace that held the key) plus w * Attn(Q_img, K', V').

    `image_attention` runs the image term (ComfyUI's selected backend or its
    fused "pytorch" one; `sdpa_attention` without ComfyUI).
    """

    branch: ImageBranch
    layer: int
    previous: BlockReplace | None = None
    image_attention: AttentionFn = sdpa_attention
    weight: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", self.branch.layer_weight(self.layer))

    def __deepcopy__(self, memo: dict) -> DoubleBlockPatch:
        return self

    def __call__(self, args: dict, extra: dict) -> dict:
        original = extra["original_block"]
        if self.previous is None:
            return self.run_block(args, original)
        return self.previous(args, {**extra, "original_block": lambda inner: self.run_block(inner, original)})

    def run_block(self, args: dict, original: Callable[[dict], dict]) -> dict:
        """Run `original` with our tap in the attention, then add the term to the image stream."""
        options = args["transformer_options"]
        img = args["img"]
        chunks = options["cond_or_uncond"]
        gate = self.branch.gate(options["sigmas"], len(chunks), img.device, img.dtype)
        if self.weight == 0.0 or gate.skip:
            return original(args)
        tap = _Tap(self, args, gate, options, options.get(OVERRIDE_KEY))
        out = original({**args, "transformer_options": {**options, OVERRIDE_KEY: tap}})
        if tap.term is None:
            raise RuntimeError(
                f"IP-Adapter: Flux double block {self.layer} ran without its joint attention reaching the "
                "optimized_attention_override hook; another node replaced the block's attention. Remove it or "
                "apply the IP-Adapter before it."
            )
        result = out["img"]
        result = result.add_(tap.term) if not torch.is_grad_enabled() else result + tap.term
        return {**out, "img": result}

    def term(self, q_img: Tensor, pe_img: Tensor, gate: StepGate, options: dict) -> Tensor:
        """w * gate * mask * Attn(unrope(q_img), K', V') for the rows of this call, [B, L_img, hidden]."""
        branch = self.branch
        chunks = options["cond_or_uncond"]
        batch = q_img.shape[0] // len(chunks)
        k_ip, v_ip = branch.rows(self.layer, chunks, batch, q_img.device, q_img.dtype, branch.frames(batch, options))
        query = unrope(q_img, pe_img)
        term = flux_image_attention(query, k_ip, v_ip, self.image_attention, transformer_options=options)
        inplace = not torch.is_grad_enabled()
        term = branch.scale_term(term, gate, options, len(chunks), batch, inplace)
        if branch.mask is not None:
            if "original_shape" not in options:
                raise RuntimeError("IP-Adapter: the Flux mask needs the latent size; its diffusion-model wrapper "
                                   "did not run (was the model patched by ApplyIPAdapter?).")
            mask = branch.mask_grid(options["original_shape"], term.shape[1], len(chunks), batch, term.device,
                                    term.dtype, branch.mask_frames(batch, options))
            term = term.mul_(mask) if inplace else term * mask
        return term



def latent_shape_wrapper(executor: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """APPLY_MODEL wrapper: put the latent's shape in (a copy of) transformer_options as "original_shape".

    Flux, unlike the UNet, does not record it; the mask needs it to lay itself on
    the token grid (ceil(H/2) x ceil(W/2) for 2x2 patches). `apply_model(x, t,
    c_concat, c_crossattn, control, transformer_options, ...)`.
    """
    x = args[0]
    if "transformer_options" in kwargs:
        kwargs = {**kwargs, "transformer_options": {**kwargs["transformer_options"], "original_shape": list(x.shape)}}
    else:
        args = (*args[:5], {**args[5], "original_shape": list(x.shape)}, *args[6:])
    return executor(*args, **kwargs)


class FluxInjection:
    """The 19 double blocks of Flux dev/schnell (image stream only; single blocks are untouched)."""

    family = ModelFamily.FLUX

    def points(self, spec: AdapterSpec) -> dict[int, HookPoint]:
        return {index: point(index) for index in spec.layer_indices}

    def make_patch(self, branch: ImageBranch, layer: int, previous: Any, backends: Backends) -> DoubleBlockPatch:
        return DoubleBlockPatch(branch, layer, previous, backends.image or backends.attention)

    def describe_model(self, found: Mapping[HookPoint, int]) -> str | None:
        blocks = sum(1 for p in found if p.hook == "dit" and p.key[0] == "double_block")
        if blocks == 0:
            return None
        return "Flux" if blocks == 19 else f"a Flux-like DiT with {blocks} double blocks"

    def wrappers(self, branch: ImageBranch) -> tuple[tuple[str, Callable[..., Any]], ...]:
        """APPLY_MODEL wrappers the patches need: the latent shape, only when there is a mask."""
        return (("apply_model", latent_shape_wrapper),) if branch.mask is not None else ()


FLUX = FluxInjection()
