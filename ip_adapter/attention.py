"""The decoupled cross-attention of IP-Adapter, as small pure functions.

Paper (Ye et al., 2023, eq. 5): `Z = Attn(Q, K, V) + lambda * Attn(Q, K', V')`
with `K' = c_i W'_k`, `V' = c_i W'_v`, where Q is the host layer's own query,
the image term uses the host's heads and 1/sqrt(head_dim), and no mask.
All tensors are in ComfyUI's attn2 layout: [batch, tokens, heads * head_dim].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from einops import rearrange
from torch import Tensor

#: ComfyUI's `optimized_attention(q, k, v, heads, **kwargs)` signature.
AttentionFn = Callable[..., Tensor]

#: `cond_or_uncond` entries as ComfyUI writes them.
COND, UNCOND = 0, 1


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, heads: int, **_: object) -> Tensor:
    """Reference multi-head attention: [b, n, h*d] x [b, m, h*d] -> [b, n, h*d]."""
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


def image_term(q: Tensor, k_ip: Tensor, v_ip: Tensor, heads: int, attention: AttentionFn, **kwargs: object) -> Tensor:
    """`Attn(Q, K', V')` through the host's attention backend."""
    return attention(q, k_ip, v_ip, heads, **kwargs)
