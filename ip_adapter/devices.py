"""Device comparison for the caches that follow ComfyUI's load and offload."""

from __future__ import annotations

import torch


def same_device(cached: torch.device, target: torch.device) -> bool:
    """True when a tensor cached on `cached` can serve `target` ("cuda" matches any "cuda:N")."""
    return cached.type == target.type and (target.index is None or cached.index == target.index)
