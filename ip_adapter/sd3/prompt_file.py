"""SD3.5 image prompts on disk: the SigLIP features and the adapter's dimensions.

Same container as the UNet prompts (`.image_prompt.safetensors`, tensors `cond`
and `uncond`, format tag and version in the metadata); the metadata's `family`
is "SD3.5" and `sd3_shape` holds the `SD3AdapterShape` as JSON, so loading can
refuse a prompt for another adapter. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, fields

import torch

from ..errors import ImagePromptError
from ..prompt_file import FORMAT, VERSION
from .format import SD3AdapterShape
from .prompt import SD3ImagePrompt

FAMILY = "SD3.5"


def save_sd3_prompt(prompt: SD3ImagePrompt, path: str | os.PathLike[str], extra: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    metadata = {**(extra or {}), "format": FORMAT, "format_version": VERSION, "family": FAMILY,
                "sd3_shape": json.dumps(asdict(prompt.shape), sort_keys=True)}
    tensors = {"cond": prompt.cond.detach().float().cpu().clone(memory_format=torch.contiguous_format),
               "uncond": prompt.uncond.detach().float().cpu().clone(memory_format=torch.contiguous_format)}
    save_file(tensors, os.fspath(path), metadata=metadata)


def is_sd3_prompt_file(path: str | os.PathLike[str]) -> bool:
    """True when the file's metadata says SD3.5 (False for unreadable files: the generic loader reports those)."""
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt", device="cpu") as handle:
            return (handle.metadata() or {}).get("family") == FAMILY
    except Exception:  # noqa: BLE001 (safetensors raises several types; the caller's loader names the problem)
        return False


def load_sd3_prompt(path: str | os.PathLike[str]) -> SD3ImagePrompt:
    from safetensors import safe_open

    source = os.path.basename(os.fspath(path))
    with safe_open(os.fspath(path), framework="pt", device="cpu") as handle:
        metadata = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
    if metadata.get("format") != FORMAT or metadata.get("format_version") != VERSION:
        raise ImagePromptError(f"'{source}' is not an image prompt of format {FORMAT} version {VERSION}.")
    if set(tensors) != {"cond", "uncond"}:
        raise ImagePromptError(f"'{source}' must hold exactly the tensors 'cond' and 'uncond', found {sorted(tensors)}.")
    try:
        data = json.loads(metadata.get("sd3_shape", ""))
        names = {f.name for f in fields(SD3AdapterShape)}
        if not isinstance(data, dict) or set(data) != names or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in data.values()):
            raise ValueError("fields or values do not match")
    except ValueError as exc:
        raise ImagePromptError(f"'{source}': invalid SD3.5 adapter dimensions in its metadata ({exc}).") from None
    try:
        return SD3ImagePrompt(cond=tensors["cond"].float(), uncond=tensors["uncond"].float(),
                              shape=SD3AdapterShape(**data))
    except ImagePromptError as exc:
        raise ImagePromptError(f"'{source}': {exc}") from None
