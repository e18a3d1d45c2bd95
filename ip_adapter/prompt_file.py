"""Image prompts on disk: `.safetensors` with the cond/uncond tokens and the adapter spec.

A saved prompt is reused without the CLIP vision model (and without the
reference images). The file holds two float32 tensors, `cond` and `uncond`
([n, tokens, width]), and string metadata: a format tag, a version, and the
`AdapterSpec` of the adapter that projected the tokens as JSON, so that loading
can refuse a prompt for another adapter exactly as a freshly encoded one would be.
Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, fields
from typing import Any

import torch

from .errors import ImagePromptError
from .prompt import ImagePrompt
from .spec import AdapterSpec, BaseModel, EncoderFeature, ProjectionKind

FORMAT = "ip_adapter_image_prompt"
VERSION = "1"
#: What saved prompts are called, so loaders can list them apart from other safetensors files.
SUFFIX = ".image_prompt.safetensors"
_ENUMS = {"base": BaseModel, "projection": ProjectionKind, "feature": EncoderFeature}
_INTS = ("clip_dim", "cross_attention_dim", "tokens")
_INT_TUPLES = ("layer_indices", "layer_widths")


def spec_to_json(spec: AdapterSpec) -> str:
    """The spec as JSON (enums by value, tuples as lists)."""
    return json.dumps({key: value.value if key in _ENUMS else value for key, value in asdict(spec).items()},
                      sort_keys=True)


def spec_from_json(text: str, source: str) -> AdapterSpec:
    """Parse `spec_to_json`'s output strictly; every problem names `source` and the field."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImagePromptError(f"'{source}': the adapter spec in its metadata is not JSON ({exc.msg}).") from None
    if not isinstance(data, dict):
        raise ImagePromptError(f"'{source}': the adapter spec in its metadata is not a JSON object.")
    names = {f.name for f in fields(AdapterSpec)}
    if set(data) != names:
        missing, unknown = sorted(names - set(data)), sorted(set(data) - names)
        raise ImagePromptError(f"'{source}': adapter spec fields missing {missing}, unknown {unknown}.")
    values: dict[str, Any] = {"variant": data["variant"]}
    try:
        for key, enum in _ENUMS.items():
            values[key] = enum(data[key])
        for key in _INTS:
            values[key] = _positive_int(data[key], key)
        for key in _INT_TUPLES:
            if not isinstance(data[key], list):
                raise TypeError(f"{key} must be a list")
            values[key] = tuple(_positive_int(v, key) for v in data[key])
        if not isinstance(values["variant"], str):
            raise TypeError("variant must be a string")
    except (TypeError, ValueError) as exc:
        raise ImagePromptError(f"'{source}': invalid adapter spec in its metadata: {exc}.") from None
    if len(values["layer_indices"]) != len(values["layer_widths"]):
        raise ImagePromptError(f"'{source}': the adapter spec lists a different number of layer indices and widths.")
    return AdapterSpec(**values)


def _positive_int(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key} must hold non-negative integers, got {value!r}")
    return value


def save_image_prompt(prompt: ImagePrompt, path: str | os.PathLike[str], extra: dict[str, str] | None = None) -> None:
    """Write `prompt` to `path` (.safetensors); `extra` adds string metadata (e.g. the adapter file name)."""
    from safetensors.torch import save_file

    metadata = {**(extra or {}), "format": FORMAT, "format_version": VERSION, "adapter_spec": spec_to_json(prompt.spec)}
    # Own copies: safetensors refuses tensors that share memory (cond may be a view of uncond).
    tensors = {"cond": prompt.cond.detach().float().cpu().clone(memory_format=torch.contiguous_format),
               "uncond": prompt.uncond.detach().float().cpu().clone(memory_format=torch.contiguous_format)}
    save_file(tensors, os.fspath(path), metadata=metadata)


def load_image_prompt(path: str | os.PathLike[str]) -> ImagePrompt:
    """Read and validate a saved image prompt; every error names the file and what is wrong."""
    from safetensors import safe_open

    path = os.fspath(path)
    source = os.path.basename(path)
    if not path.lower().endswith(".safetensors"):
        raise ImagePromptError(f"'{source}': image prompts are read from .safetensors files only.")
    if not os.path.isfile(path):
        raise ImagePromptError(f"Image prompt file not found: {path}")
    try:
        with safe_open(path, framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
    except Exception as exc:  # noqa: BLE001  (safetensors raises several error types)
        raise ImagePromptError(
            f"Could not read image prompt '{source}': {type(exc).__name__}: {str(exc)[:200]}. "
            "The file is truncated or not a safetensors file; save it again."
        ) from None
    if metadata.get("format") != FORMAT:
        raise ImagePromptError(
            f"'{source}' is not an image prompt saved by Save Image Prompt (its metadata has no "
            f"format '{FORMAT}'). Pick a file written by that node."
        )
    if metadata.get("format_version") != VERSION:
        raise ImagePromptError(
            f"'{source}' has image prompt format version {metadata.get('format_version')!r}; this pack reads "
            f"version {VERSION}. Update the pack or save the prompt again."
        )
    if set(tensors) != {"cond", "uncond"}:
        raise ImagePromptError(f"'{source}' must hold exactly the tensors 'cond' and 'uncond', found {sorted(tensors)}.")
    spec = spec_from_json(metadata.get("adapter_spec", ""), source)
    cond, uncond = tensors["cond"], tensors["uncond"]
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise ImagePromptError(f"'{source}': tensor '{name}' has dtype {tensor.dtype}; expected float tokens.")
    if cond.ndim == 3 and cond.shape[1] % spec.tokens:
        raise ImagePromptError(
            f"'{source}': {cond.shape[1]} tokens is not a multiple of the adapter's {spec.tokens} tokens per image."
        )
    try:
        return ImagePrompt(cond=cond.to(torch.float32), uncond=uncond.to(torch.float32), spec=spec)
    except ImagePromptError as exc:
        raise ImagePromptError(f"'{source}': {exc}") from None
