"""The loaded SD3.5 adapter: the time-conditioned resampler plus one `JointBlockIP` per joint block.

Attribute names equal the checkpoint keys (`image_proj.*`, `ip_adapter.N.norm_ip.linear`,
`ip_adapter.N.to_k_ip`, ...), so the file loads with `strict=True` and no key map.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..model import load_checked
from ..spec import AdapterSpec
from ..state_dict import read_file
from .format import SD3AdapterShape, detect_sd3, spec_of
from .resampler import AdaNormIP, TimeResampler


def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    """`x / sqrt(mean(x^2) + eps) * weight` over the last dimension, computed in fp32 (Zhang & Sennrich, 2019)."""
    normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
    return normed.to(x.dtype) * weight.to(x.dtype)


class HeadNorm(nn.Module):
    """An RMSNorm over one attention head (key `.weight`, [head_dim])."""

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(head_dim))

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight)


class JointBlockIP(nn.Module):
    """One joint block's adapter weights: norm_ip, K/V of the image tokens, and three head norms."""

    def __init__(self, shape: SD3AdapterShape) -> None:
        super().__init__()
        self.norm_ip = AdaNormIP(shape.resampler_dim, shape.token_dim)
        self.to_k_ip = nn.Linear(shape.token_dim, shape.hidden_size, bias=False)
        self.to_v_ip = nn.Linear(shape.token_dim, shape.hidden_size, bias=False)
        self.norm_q = HeadNorm(shape.head_dim)
        self.norm_k = HeadNorm(shape.head_dim)
        self.norm_ip_k = HeadNorm(shape.head_dim)


class SD3Adapter(nn.Module):
    """The InstantX SD3.5 IP-Adapter: `image_proj` (TimeResampler) and `ip_adapter.N` (JointBlockIP)."""

    def __init__(self, shape: SD3AdapterShape) -> None:
        super().__init__()
        self.shape = shape
        self.image_proj = TimeResampler(shape)
        self.ip_adapter = nn.ModuleDict({str(i): JointBlockIP(shape) for i in range(shape.blocks)})

    @property
    def spec(self) -> AdapterSpec:
        """The family-neutral description the nodes and the family seam read (base SD3.5, MMDiT family)."""
        return spec_of(self.shape)

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Tensor], source: str = "checkpoint") -> SD3Adapter:
        """Detect the dimensions, build on the meta device, load strictly (assign, no copy)."""
        shape = detect_sd3(sd, source)
        with torch.device("meta"):
            model = cls(shape)
        return load_checked(model, sd, source)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> SD3Adapter:
        """Read (safetensors, or a pickle with weights_only=True), detect and load; errors name the file."""
        return cls.from_state_dict(read_file(path), source=os.path.basename(os.fspath(path)))

    def _weights(self) -> Tensor:
        return next(self.parameters())

    @torch.no_grad()
    def tokens(self, features: Tensor, timestep: Tensor) -> tuple[Tensor, Tensor]:
        """SigLIP features [B, n, E] and timesteps [B] -> (image tokens [B, Q, C], time embedding [B, D]).

        Runs in the weights' dtype on the weights' device, as the reference does.
        """
        weights = self._weights()
        features = features.to(device=weights.device, dtype=weights.dtype)
        return self.image_proj(features, timestep.to(device=weights.device))

    @torch.no_grad()
    def block_kv(self, index: int, tokens: Tensor, time_emb: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """One block's K (head-normed with norm_ip_k) and V of the image tokens, [B, Q, hidden] each, in `dtype`."""
        block = self.ip_adapter[str(index)]
        normed = block.norm_ip(tokens, time_emb)
        k = block.to_k_ip(normed)
        v = block.to_v_ip(normed)
        heads = self.shape.model_heads
        k = block.norm_ip_k(k.unflatten(-1, (heads, -1))).flatten(-2)
        return k.to(dtype), v.to(dtype)
