"""The decoupled cross-attention of IP-Adapter, as small pure functions.

Paper (Ye et al., 2023, eq. 5): `Z = Attn(Q, K, V) + lambda * Attn(Q, K', V')`
with `K' = c_i W'_k`, `V' = c_i W'_v`, where Q is the host layer's own query,
the image term uses the host's heads and 1/sqrt(head_dim), and no mask.
All tensors are in ComfyUI's attn2 layout: [batch, tokens, heads * head_dim].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import Enum

import torch
from einops import rearrange
from torch import Tensor

#: ComfyUI's `optimized_attention(q, k, v, heads, **kwargs)` signature.
AttentionFn = Callable[..., Tensor]

#: `cond_or_uncond` entries as ComfyUI writes them.
COND, UNCOND = 0, 1


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, heads: int, skip_reshape: bool = False, **_: object) -> Tensor:
    """Reference multi-head attention: [b, n, h*d] x [b, m, h*d] -> [b, n, h*d].

    With `skip_reshape` (ComfyUI's flag for DiTs) the inputs are already [b, h, n, d].
    """
    if not skip_reshape:
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=heads) for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return rearrange(out, "b h n d -> b n (h d)")


def assemble_rows(cond_or_uncond: Sequence[int], batch: int, cond: Tensor, uncond: Tensor) -> Tensor:
    """Image K (or V) rows matching ComfyUI's q batch.

    ComfyUI stacks `len(cond_or_uncond)` chunks of `batch` rows each (e.g. [1, 0]:
    uncond rows first). `cond`/`uncond` are [1, T, C] (one token set shared by the
    whole latent batch) or [batch, T, C] (one per latent). Returns [chunks*batch, T, C].
    """
    chunks = [uncond if kind == UNCOND else cond for kind in cond_or_uncond]
    return torch.cat([c.expand(batch, -1, -1) for c in chunks], dim=0)


def schedule_gate(sigmas: Tensor, sigma_start: float, sigma_end: float, chunks: int) -> Tensor:
    """1.0 for q rows whose sigma lies in [sigma_end, sigma_start], else 0.0.

    Same test as ComfyUI's ControlNet timestep range. Computed on the sigmas'
    device without reading them back, so it never syncs a GPU. Shape [chunks*B, 1, 1].
    """
    active = (sigmas <= sigma_start) & (sigmas >= sigma_end)
    return active.repeat(chunks).view(-1, 1, 1)


class EmbedsScaling(str, Enum):
    """Where the weight enters the image attention (the reference pack's "embeds_scaling").

    V only is the paper: `w * Attn(Q, K', V')` (computed as `Attn(Q, K', w V')`, the
    same). The others scale the image keys and values before the attention, which
    also sharpens (w > 1) or flattens the attention over the image tokens; "C
    penalty" first multiplies w by `C / 1280`, C the layer width, so the narrow
    high-resolution layers take less.
    """

    V_ONLY = "V only"
    K_V = "K+V"
    K_V_PENALTY = "K+V w/ C penalty"
    K_MEAN_V_PENALTY = "K+mean(V) w/ C penalty"


#: The width the C penalty divides by (SD's widest attention, 1280).
PENALTY_WIDTH = 1280.0


def scale_kv(k_ip: Tensor, v_ip: Tensor, weight: float, mode: EmbedsScaling) -> tuple[Tensor, Tensor]:
    """Fold `weight` into the image K/V; [b, T, C] each.

    * V only: `V' w`. The attention is linear in V, so this equals `w Attn(Q, K', V')`
      without a pass over the (much larger) output.
    * K+V: `K' w`, `V' w`.
    * K+V w/ C penalty: the same with `w C / 1280`.
    * K+mean(V) w/ C penalty: `K' w_c`; `V' - mean_T(V') + w_c mean_T(V')`, mean over the
      image tokens, so only the shared part of V is scaled.
    """
    if mode is EmbedsScaling.V_ONLY:
        return k_ip, v_ip * weight
    if mode is not EmbedsScaling.K_V:
        weight = weight * (k_ip.shape[-1] / PENALTY_WIDTH)
    if mode is EmbedsScaling.K_MEAN_V_PENALTY:
        mean = v_ip.mean(dim=1, keepdim=True)
        return k_ip * weight, (v_ip - mean) + mean * weight
    return k_ip * weight, v_ip * weight


def image_term(q: Tensor, k_ip: Tensor, v_ip: Tensor, heads: int, attention: AttentionFn, **kwargs: object) -> Tensor:
    """`Attn(Q, K', V')` through the host's attention backend."""
    return attention(q, k_ip, v_ip, heads, **kwargs)
