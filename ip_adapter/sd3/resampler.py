"""The SD3.5 adapter's time-conditioned Perceiver resampler, and the per-block norm_ip.

Re-implemented from the InstantX release as diffusers documents it
(`IPAdapterTimeImageProjection`): the Flamingo resampler (Alayrac et al., 2022)
of the IP-Adapter plus models, with the timestep added to the image features
and adaptive LayerNorms (shift/scale from the time embedding) before each
attention and feed-forward. Submodule names equal the checkpoint keys under
`image_proj.`, so the published file loads strictly with no key map.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..projection import perceiver_attend
from .format import RESAMPLER_HEAD_DIM, SD3AdapterShape


def timestep_features(timestep: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal timestep features [B] -> [B, dim], cosines first (DDPM / diffusers `Timesteps`, flip=True, shift 0).

    frequency_j = max_period^(-j / (dim/2)), j < dim/2; returns [cos(t f), sin(t f)].
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timestep.device) / half
    angles = timestep.float()[:, None] * torch.exp(exponent)[None, :]
    features = torch.cat((torch.cos(angles), torch.sin(angles)), dim=-1)
    if dim % 2:
        features = nn.functional.pad(features, (0, 1))
    return features


class TimeEmbedding(nn.Module):
    """Linear, SiLU, Linear on the sinusoidal features: keys `linear_1`, `linear_2`."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear_2(nn.functional.silu(self.linear_1(features)))


class TimePerceiverAttention(nn.Module):
    """Latents attend to [features; latents]; q and k each scaled by head_dim^(-1/4), softmax in fp32.

    Keys: `norm1` (features), `norm2` (latents, then shifted/scaled by the time
    embedding), `to_q`, `to_kv` (fused), `to_out`; no biases in the projections.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        inner = heads * RESAMPLER_HEAD_DIM
        self.heads = heads
        self.scale = RESAMPLER_HEAD_DIM ** -0.25
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, features: Tensor, latents: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
        """features [B, n, dim], latents [B, q, dim], shift/scale [B, dim] -> [B, q, dim]."""
        latents = self.norm2(latents) * (1 + scale[:, None]) + shift[:, None]
        return perceiver_attend(self, self.norm1(features), latents)


class TimeFeedForward(nn.Module):
    """LayerNorm (then time shift/scale), Linear, exact GELU, Linear: keys `.0 .1 .3` as in the release."""

    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.add_module("0", nn.LayerNorm(dim))
        self.add_module("1", nn.Linear(dim, inner, bias=False))
        self.add_module("3", nn.Linear(inner, dim, bias=False))

    def forward(self, latents: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
        norm, up, down = getattr(self, "0"), getattr(self, "1"), getattr(self, "3")
        x = norm(latents) * (1 + scale[:, None]) + shift[:, None]
        return down(nn.functional.gelu(up(x)))


class AdaLNProjection(nn.Module):
    """SiLU then Linear(dim, 4 dim): the (shift, scale) pairs of one layer's two adaptive norms. Key `.1`."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.add_module("1", nn.Linear(dim, 4 * dim))

    def forward(self, time_emb: Tensor) -> tuple[Tensor, ...]:
        return getattr(self, "1")(nn.functional.silu(time_emb)).chunk(4, dim=-1)


class TimeResampler(nn.Module):
    """SigLIP hidden states [B, n, E] and timesteps [B] -> (tokens [B, Q, C], time embedding [B, D]).

    The time embedding is returned because every joint block's `norm_ip` reads it.
    """

    def __init__(self, shape: SD3AdapterShape) -> None:
        super().__init__()
        dim = shape.resampler_dim
        self.timestep_dim = shape.timestep_dim
        self.latents = nn.Parameter(torch.zeros(1, shape.tokens, dim))
        self.proj_in = nn.Linear(shape.clip_dim, dim)
        self.proj_out = nn.Linear(dim, shape.token_dim)
        self.norm_out = nn.LayerNorm(shape.token_dim)
        self.time_embedding = TimeEmbedding(shape.timestep_dim, dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([TimePerceiverAttention(dim, shape.heads), TimeFeedForward(dim, shape.ff_inner),
                           AdaLNProjection(dim)])
            for _ in range(shape.depth)
        )

    def forward(self, features: Tensor, timestep: Tensor) -> tuple[Tensor, Tensor]:
        time_emb = self.time_embedding(timestep_features(timestep, self.timestep_dim).to(features.dtype))
        x = self.proj_in(features) + time_emb[:, None]
        latents = self.latents.expand(features.shape[0], -1, -1)
        for attention, feed_forward, ada in self.layers:
            shift_msa, scale_msa, shift_mlp, scale_mlp = ada(time_emb)
            latents = attention(x, latents, shift_msa, scale_msa) + latents
            latents = feed_forward(latents, shift_mlp, scale_mlp) + latents
        return self.norm_out(self.proj_out(latents)), time_emb


class AdaNormIP(nn.Module):
    """`norm_ip`: LayerNorm without affine (eps 1e-6), shifted and scaled from the time embedding.

    `Linear(SiLU(t))` gives [shift; scale] (diffusers' AdaLayerNorm with chunk_dim=1: shift first).
    """

    def __init__(self, time_dim: int, token_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(time_dim, 2 * token_dim)
        self.token_dim = token_dim

    def forward(self, tokens: Tensor, time_emb: Tensor) -> Tensor:
        shift, scale = self.linear(nn.functional.silu(time_emb)).chunk(2, dim=-1)
        normed = nn.functional.layer_norm(tokens, (self.token_dim,), eps=1e-6)
        return normed * (1 + scale[:, None]) + shift[:, None]
