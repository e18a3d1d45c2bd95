"""Inputs for the attn2 patch's unit tests: a small SD1.5 adapter, prompts, q/k/v, ComfyUI's options.

The adapter is the "small" random layout (its layer 31, the SD1.5 middle block, is
`WIDTH` wide); q has 64 tokens, the text k/v 77, in ComfyUI's attn2 layout.
"""

from __future__ import annotations

import torch
from ipadapter_pack.ip_adapter.attention import sdpa_attention
from ipadapter_pack.ip_adapter.model import IPAdapterModel
from ipadapter_pack.ip_adapter.prompt import ImagePrompt

from support import checkpoints

HEADS, WIDTH, LAYER = 8, 128, 31  # layer 31 = SD1.5 middle block, 128 wide in the small layout


def small_sd15_adapter() -> IPAdapterModel:
    return IPAdapterModel.from_state_dict(checkpoints.ip_adapter_state_dict("ip-adapter_sd15", "small", seed=5), "sd15")


def prompt_for(adapter: IPAdapterModel, seed: int) -> ImagePrompt:
    """Cond tokens from random image embeds, uncond from zeros (the base adapter's rule)."""
    g = torch.Generator().manual_seed(seed)
    cond = adapter.project(torch.randn(1, 1024, generator=g))
    uncond = adapter.project(torch.zeros(1, 1024))
    return ImagePrompt(cond=cond, uncond=uncond, spec=adapter.spec)


def qkv(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 64, WIDTH, generator=g), torch.randn(batch, 77, WIDTH, generator=g),
            torch.randn(batch, 77, WIDTH, generator=g))


def options_for(cond_or_uncond: list[int], sigmas: list[float]) -> dict:
    """The attn2 patch's `extra_options` as ComfyUI fills them (the keys the patch reads)."""
    return {"n_heads": HEADS, "dim_head": WIDTH // HEADS, "cond_or_uncond": cond_or_uncond,
            "sigmas": torch.tensor(sigmas), "attn_precision": None}


def layer_kv(adapter: IPAdapterModel, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Image K and V of `LAYER` for `tokens`, straight from the adapter's linear layers."""
    layer = adapter.ip_adapter[str(LAYER)]
    with torch.no_grad():
        return layer.to_k_ip(tokens), layer.to_v_ip(tokens)


def attend(q: torch.Tensor, k_tokens: torch.Tensor, v_tokens: torch.Tensor) -> torch.Tensor:
    """Reference attention of q over one token set shared by every row of q."""
    return sdpa_attention(q, k_tokens.expand(q.shape[0], -1, -1), v_tokens.expand(q.shape[0], -1, -1), HEADS)
