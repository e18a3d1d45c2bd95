"""Projection models: CLIP vision features -> image context tokens.

The three published kinds, re-implemented from the IP-Adapter paper (Ye et al.,
2023, sec. 3.2) and the authors' released checkpoints. Submodule names equal the
checkpoint keys under `image_proj.`, so checkpoints load strictly with no key map,
and every dimension is read from tensor shapes (`*.from_shapes`). Layers are built
without default initialisation (`uninit`): the checkpoint provides every value.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from einops import rearrange
from torch import Tensor, nn

from . import uninit

#: Head width of the Perceiver attention in every published resampler.
RESAMPLER_HEAD_DIM = 64


class ImageProjModel(nn.Module):
    """Base adapters: `LayerNorm(reshape(W e + b))`, e = CLIP `image_embeds`.

    Shapes: [B, clip_dim] -> [B, tokens, cross_attention_dim].
    """

    def __init__(self, clip_dim: int, cross_attention_dim: int, tokens: int) -> None:
        super().__init__()
        self.tokens = tokens
        self.cross_attention_dim = cross_attention_dim
        self.proj = uninit.Linear(clip_dim, tokens * cross_attention_dim)
        self.norm = uninit.LayerNorm(cross_attention_dim)

    @classmethod
    def from_shapes(cls, sd: Mapping[str, Tensor]) -> ImageProjModel:
        rows, clip_dim = sd["proj.weight"].shape
        cross = sd["norm.weight"].shape[0]
        return cls(clip_dim, cross, rows // cross)

    def forward(self, image_embeds: Tensor) -> Tensor:
        x = self.proj(image_embeds)
        x = rearrange(x, "b (n c) -> b n c", n=self.tokens)
        return self.norm(x)


class MLPProjModel(nn.Module):
    """Full-face adapters: Linear, GELU, Linear, LayerNorm on every hidden-state token.

    Shapes: [B, 257, clip_hidden] -> [B, 257, cross_attention_dim].
    """

    def __init__(self, clip_dim: int, cross_attention_dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            uninit.Linear(clip_dim, clip_dim),
            nn.GELU(),
            uninit.Linear(clip_dim, cross_attention_dim),
            uninit.LayerNorm(cross_attention_dim),
        )

    @classmethod
    def from_shapes(cls, sd: Mapping[str, Tensor]) -> MLPProjModel:
        return cls(sd["proj.0.weight"].shape[1], sd["proj.2.weight"].shape[0])

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.proj(hidden_states)


class PerceiverAttention(nn.Module):
    """Latents attend to [features; latents] (Perceiver / Flamingo resampler block).

    q and k are each scaled by head_dim^(-1/4) before the product (numerically
    kinder in fp16 than scaling the product), and the softmax runs in fp32, as in
    the authors' code.
    """

    def __init__(self, dim: int, heads: int, dim_head: int = RESAMPLER_HEAD_DIM) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.scale = dim_head ** -0.25
        self.norm1 = uninit.LayerNorm(dim)
        self.norm2 = uninit.LayerNorm(dim)
        self.to_q = uninit.Linear(dim, inner, bias=False)
        self.to_kv = uninit.Linear(dim, inner * 2, bias=False)
        self.to_out = uninit.Linear(inner, dim, bias=False)

    def forward(self, features: Tensor, latents: Tensor) -> Tensor:
        """features: [B, n, dim], latents: [B, q, dim] -> [B, q, dim]."""
        return perceiver_attend(self, self.norm1(features), self.norm2(latents))


def perceiver_attend(block: nn.Module, features: Tensor, latents: Tensor) -> Tensor:
    """The attention of a Perceiver block (`to_q`, fused `to_kv`, `to_out`, `heads`, `scale`) on normed inputs.

    Shared by `PerceiverAttention` and SD3.5's time-conditioned block, which differ
    only in how the latents are normalised.
    """
    q = block.to_q(latents)
    k, v = block.to_kv(torch.cat((features, latents), dim=-2)).chunk(2, dim=-1)
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=block.heads) for t in (q, k, v))
    logits = (q * block.scale) @ (k * block.scale).transpose(-2, -1)
    weights = torch.softmax(logits.float(), dim=-1).to(logits.dtype)
    return block.to_out(rearrange(weights @ v, "b h n d -> b n (h d)"))


def _feed_forward(dim: int, inner: int) -> nn.Sequential:
    """LayerNorm, Linear (no bias), exact GELU, Linear (no bias): keys `.0 .1 .3`."""
    return nn.Sequential(
        uninit.LayerNorm(dim),
        uninit.Linear(dim, inner, bias=False),
        nn.GELU(),
        uninit.Linear(inner, dim, bias=False),
    )


class Resampler(nn.Module):
    """Plus / plus-face adapters: learned queries resample CLIP hidden states.

    Shapes: [B, 257, clip_hidden] -> [B, num_queries, output_dim].
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        num_queries: int,
        embedding_dim: int,
        output_dim: int,
        ff_inner: int,
    ) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.empty(1, num_queries, dim))  # from the checkpoint
        self.proj_in = uninit.Linear(embedding_dim, dim)
        self.proj_out = uninit.Linear(dim, output_dim)
        self.norm_out = uninit.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, heads), _feed_forward(dim, ff_inner)])
            for _ in range(depth)
        )

    @classmethod
    def from_shapes(cls, sd: Mapping[str, Tensor]) -> Resampler:
        _, num_queries, dim = sd["latents"].shape
        depth = len({key.split(".")[1] for key in sd if key.startswith("layers.")})
        return cls(
            dim=dim,
            depth=depth,
            heads=sd["layers.0.0.to_q.weight"].shape[0] // RESAMPLER_HEAD_DIM,
            num_queries=num_queries,
            embedding_dim=sd["proj_in.weight"].shape[1],
            output_dim=sd["proj_out.weight"].shape[0],
            ff_inner=sd["layers.0.1.1.weight"].shape[0],
        )

    def forward(self, hidden_states: Tensor) -> Tensor:
        latents = self.latents.expand(hidden_states.shape[0], -1, -1)
        features = self.proj_in(hidden_states)
        for attention, feed_forward in self.layers:
            latents = attention(features, latents) + latents
            latents = feed_forward(latents) + latents
        return self.norm_out(self.proj_out(latents))
