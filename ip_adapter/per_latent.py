"""One reference per latent: which prompt rows, masks and weights serve the latents of one UNet call.

Why: animation and seed batches want reference i on latent i (frames), with a
weight per latent. An image prompt made with `combine_embeds = one per latent`
holds N token rows; a mask input may hold N masks; per-latent weights are N
numbers. In a UNet call ComfyUI stacks `chunks` (cond/uncond) of `batch`
latents. Three cases:

* 1 item: it serves every latent (today's rule).
* ComfyUI's context windows (`ContextWindowsManual`) are active: the call holds
  only the frames of one window, whose indices ComfyUI publishes as
  `transformer_options["context_window"].index_list` (batch dimension, dim 0);
  the items of exactly those frames are picked, so each window sees its own
  references and masks.
* N == batch: item i serves latent i.

Any other count is refused with the counts named: silently reusing or cycling
references would give a wrong animation without a word.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .errors import ImagePromptError
from .number_list import parse_numbers


def window_frames(window: Any, count: int, batch: int) -> tuple[int, ...] | None:
    """The frame indices of the active context window when it cuts this call out of `count` latents.

    None when no window applies: no window, a window over another dimension (video models'
    frame axis is not the latent batch), or one that does not cover this call's batch.
    """
    index_list = getattr(window, "index_list", None)
    if index_list is None or getattr(window, "dim", 0) != 0 or len(index_list) != batch:
        return None
    if getattr(window, "total_frames", count) != count:
        return None
    return tuple(int(i) for i in index_list)


def latent_indices(count: int, batch: int, options: dict, what: str,
                   where: str = "ApplyIPAdapter") -> tuple[int, ...] | None:
    """Which of `count` per-latent items serve this call's `batch` latents, in order; None = use as they are.

    `what` names the items for the error ("image prompt rows (one reference per latent)"),
    `where` the node input they came from ("ApplyIPAdapter attn_mask").
    """
    if count == 1:
        return None
    frames = window_frames(options.get("context_window"), count, batch)
    if frames is not None:
        if max(frames) >= count:
            raise ImagePromptError(f"{where}: the context window holds frame {max(frames)}, but there are "
                                   f"only {count} {what}.")
        return frames
    if count == batch:
        return None
    raise ImagePromptError(
        f"{where}: {count} {what} for a batch of {batch} latents. Give 1 (used for every latent) or exactly "
        f"{batch} (one per latent, in batch order); with context windows, one per frame of the whole batch."
    )


def pick(items: Tensor, indices: tuple[int, ...] | None) -> Tensor:
    """items[indices] along dim 0, or `items` itself when indices is None.

    Context windows are usually runs of consecutive frames: those are a slice (a view; no index
    tensor is copied to the device). Others (looped windows) gather with an index tensor.
    """
    if indices is None:
        return items
    if list(indices) == list(range(indices[0], indices[0] + len(indices))):
        return items[indices[0]:indices[0] + len(indices)]
    return items.index_select(0, torch.tensor(indices, dtype=torch.long, device=items.device))


def parse_latent_weights(text: str | None, values: Any = None) -> tuple[float, ...] | None:
    """Per-latent weights from the STRING input ('1, 0.8, ...') or a FLOAT input holding a list.

    Other packs (e.g. KJNodes' weight generators) pass a Python list of floats on a FLOAT
    socket; a single number is one weight for all. The FLOAT input wins when both are given.
    None: no per-latent weights (every latent at the node's weight).
    """
    where = "ApplyIPAdapter latent_weights"
    if values is not None:
        items = list(values) if isinstance(values, (list, tuple)) else [values]
        if isinstance(values, Tensor):
            items = values.flatten().tolist()
        out = []
        for position, item in enumerate(items, start=1):
            if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(float(item)):
                raise ImagePromptError(f"{where}_list: item {position} is {item!r}; expected a finite number.")
            out.append(float(item))
        if not out:
            raise ImagePromptError(f"{where}_list: the list is empty; give one number per latent.")
        return tuple(out)
    parsed = parse_numbers(text, where, "Give one multiplier per latent (frame) in batch order, separated by "
                                        "commas, e.g. '1, 0.8, 0.6'; leave it empty for 1 everywhere.")
    return tuple(parsed) if parsed else None


def latent_factor(weights: Sequence[float], chunks: int, batch: int, options: dict, device: torch.device,
                  dtype: torch.dtype) -> Tensor:
    """The per-latent multipliers as a factor on ComfyUI's q rows: [chunks * batch, 1, 1] (cond and uncond alike)."""
    table = torch.tensor(list(weights), dtype=torch.float32)
    table = pick(table, latent_indices(len(weights), batch, options, "per-latent weights"))
    return table.expand(batch).repeat(chunks).view(-1, 1, 1).to(device=device, dtype=dtype)
