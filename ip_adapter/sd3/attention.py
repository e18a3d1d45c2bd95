"""The SD3.5 adapter's per-block math, as small pure functions.

diffusers `SD3IPAdapterJointAttnProcessor2_0`, for the image stream of one joint block:

    Q' = norm_q(Q_raw),  K' = [norm_k(K_raw); norm_ip_k(to_k_ip(norm_ip(c, t)))],
    V' = [V_raw; to_v_ip(norm_ip(c, t))],   out_img += w * Attn(Q', K', V')

Q_raw / K_raw / V_raw are the block's own image-stream projections (before its
QK-norm). The host hands us Q_h = rms(Q_raw) * g_q (its RMS QK-norm with gain
g_q), so norm_q(Q_raw) = rms(Q_raw) * a_q = Q_h * (a_q / g_q) per head channel:
one multiply, no second projection (`head_ratio`). Tensors are in ComfyUI's
attention layout [batch, tokens, heads * head_dim].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..attention import UNCOND
from ..errors import ImagePromptError

AttentionFn = Callable[..., Tensor]


def head_ratio(adapter_gain: Tensor, host_gain: Tensor | None) -> Tensor:
    """a / g per head channel: what turns the host's RMS-normed Q (or K) into the adapter's.

    `host_gain` None means the host has no QK-norm (Q_h = Q_raw); then the caller
    normalises itself (`adapter_query`).
    """
    if host_gain is None:
        return adapter_gain.float()
    return adapter_gain.float() / host_gain.float()


def adapter_query(q_host: Tensor, ratio: Tensor, heads: int, host_normed: bool) -> Tensor:
    """norm_q(Q_raw) from the host's Q: [B, L, H*d] -> [B, L, H*d]."""
    split = q_host.unflatten(-1, (heads, -1))
    if not host_normed:
        split = split.float() * torch.rsqrt(split.float().pow(2).mean(-1, keepdim=True) + 1e-6)
    return (split * ratio.to(split.dtype)).to(q_host.dtype).flatten(-2)


def joint_image_term(q: Tensor, k_img: Tensor, v_img: Tensor, k_ip: Tensor, v_ip: Tensor, heads: int,
                     attention: AttentionFn) -> Tensor:
    """Attn(Q', [K_img; K_ip], [V_img; V_ip]) -> [B, L, H*d]; Q'/K_img already adapter-normed.

    The image tokens' query attends over its own keys and the adapter's 64 per
    image, in one softmax, as the reference does (not a separate cross-attention).
    """
    return attention(q, torch.cat((k_img, k_ip), dim=1), torch.cat((v_img, v_ip), dim=1), heads)


def feature_rows(cond_or_uncond: Sequence[int], batch: int, cond: Tensor, uncond: Tensor) -> Tensor:
    """SigLIP features laid out like ComfyUI's q batch, one row per (chunk, latent, image).

    cond/uncond: [n, N, E] (n reference images, shared by every latent).
    Returns [chunks * batch * n, N, E]; chunk rows follow `cond_or_uncond`.
    """
    rows = [uncond if kind == UNCOND else cond for kind in cond_or_uncond for _ in range(batch)]
    return torch.cat(rows, dim=0)


def step_timesteps(sigmas: Tensor, chunks: int, images: int, multiplier: float) -> Tensor:
    """The model's timestep for each feature row: sigma * multiplier (ComfyUI's flow sampling), no host read."""
    return (sigmas.float() * multiplier).repeat(chunks).repeat_interleave(images)


def token_grid_for(tokens: int, height: int, width: int) -> tuple[int, int]:
    """(rows, cols) with rows * cols == tokens whose aspect is closest to height:width.

    A block replace sees the image tokens flattened; the mask's own aspect is
    the best hint of the latent's (exact when the mask was drawn on the image).
    """
    target = math.log(height / width)
    best = (1, tokens)
    for rows in range(1, tokens + 1):
        if tokens % rows == 0 and abs(math.log(rows / (tokens // rows)) - target) < abs(
                math.log(best[0] / best[1]) - target):
            best = (rows, tokens // rows)
    return best


def mask_tokens(mask: Tensor, tokens: int, chunks: int, batch: int, device: torch.device,
                dtype: torch.dtype) -> Tensor:
    """mask [1 or batch, H, W] -> per-token factor [chunks * batch, tokens, 1] on the patch grid (bilinear)."""
    if mask.shape[0] not in (1, batch):
        raise ImagePromptError(
            f"ApplyIPAdapter attn_mask: {mask.shape[0]} masks for a batch of {batch} latents; give one mask "
            f"(used for every latent) or exactly {batch}."
        )
    rows, cols = token_grid_for(tokens, mask.shape[-2], mask.shape[-1])
    resized = torch.nn.functional.interpolate(mask.unsqueeze(1), size=(rows, cols), mode="bilinear")
    flat = resized.reshape(mask.shape[0], tokens).expand(batch, tokens).repeat(chunks, 1)
    return flat.unsqueeze(-1).to(device=device, dtype=dtype)
