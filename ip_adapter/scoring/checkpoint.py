"""Reading full OpenCLIP checkpoints and naming their architecture from tensor shapes.

A scorer needs both towers, both projections and the tokenizer, so only the
OpenCLIP key layout is accepted (`visual.*` for the image tower; `token_embedding`,
`positional_embedding`, `transformer.*`, `ln_final`, `text_projection` for the text
tower; `logit_scale`), as in `open_clip_pytorch_model.bin` / `open_clip_model.safetensors`.
Pickles are read with `torch.load(weights_only=True)`, so a hostile file cannot run code.

The architecture is inferred from shapes (widths, depths, patch, image size, MLP
width, context, vocabulary, embedding width) and then matched against open_clip's
bundled configs. Matching is needed because the head count changes the result but
is not visible in any tensor (`in_proj_weight` is [3*width, width] for any head
count): ViT-H/14 and ViT-bigG/14 use 80- and 104-wide heads, not the usual 64.
Shapes that match no known config are rejected with the dimensions found.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..tensor_files import read_tensor_file

#: open_clip configs (bundled JSON, no download) that `infer_architecture` recognises.
KNOWN_ARCHITECTURES: tuple[str, ...] = (
    "ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "ViT-H-14", "ViT-g-14", "ViT-bigG-14",
)

#: Keys OpenAI's original checkpoints carry besides the weights (dropped on load; they mark
#: OpenAI weights, which were trained with QuickGELU).
OPENAI_EXTRA_KEYS: tuple[str, ...] = ("input_resolution", "context_length", "vocab_size")


_VISION_REQUIRED = ("visual.class_embedding", "visual.conv1.weight", "visual.positional_embedding",
                    "visual.ln_pre.weight", "visual.ln_post.weight", "visual.proj")
_TEXT_REQUIRED = ("token_embedding.weight", "positional_embedding", "ln_final.weight", "text_projection")
_VISION_BLOCK = re.compile(r"^visual\.transformer\.resblocks\.(\d+)\.")
_TEXT_BLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.")
_MAX_LISTED = 8


class ScorerFormatError(ValueError):
    """A CLIP scoring checkpoint could not be read, is incomplete, or has an unknown architecture."""


@dataclass(frozen=True)
class Signature:
    """Every dimension of a ViT CLIP that tensor shapes reveal (heads excepted, see module doc)."""

    embed_dim: int
    vision_width: int
    vision_layers: int
    vision_mlp: int
    patch_size: int
    image_size: int
    text_width: int
    text_layers: int
    text_mlp: int
    context_length: int
    vocab_size: int

    def describe(self) -> str:
        return (f"image tower {self.vision_layers} layers x {self.vision_width} wide (MLP {self.vision_mlp}), "
                f"patch {self.patch_size}, {self.image_size} px; text tower {self.text_layers} layers x "
                f"{self.text_width} wide (MLP {self.text_mlp}), context {self.context_length}, vocabulary "
                f"{self.vocab_size}; embedding {self.embed_dim}")


@dataclass(frozen=True)
class Architecture:
    """A named open_clip model config (`embed_dim`, `vision_cfg`, `text_cfg`) and its signature.

    `quick_gelu` is what a user-supplied config says about the activation (None: it
    says nothing; open_clip's bundled configs for these names say nothing either).
    """

    name: str
    config: Mapping[str, Any]
    signature: Signature
    quick_gelu: bool | None = None


def _names(keys: Sequence[str] | set[str]) -> str:
    keys = sorted(keys)
    listed = ", ".join(keys[:_MAX_LISTED])
    return listed + (f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else "")


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a local OpenCLIP checkpoint into a flat `{key: tensor}` dict on the CPU.

    Accepts `.safetensors` and pickles (`.bin/.pt/.pth/.ckpt`, weights only), a
    training checkpoint's `{"state_dict": ...}` wrapper and DDP's `module.` prefix.
    """
    name = os.path.basename(os.fspath(path))
    data = read_tensor_file(path, what="CLIP scoring checkpoint", error=ScorerFormatError,
                            safer="use the same weights in the OpenCLIP layout as .safetensors (or a plain .bin).")
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping):
        raise ScorerFormatError(f"'{name}' holds a {type(data).__name__}, not a dict of tensors.")
    if data and all(str(k).startswith("module.") for k in data):
        data = {str(k)[len("module."):]: v for k, v in data.items()}
    not_tensors = [str(k) for k, v in data.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise ScorerFormatError(f"'{name}' has entries that are not tensors: {_names(not_tensors)}.")
    return {str(k): v for k, v in data.items()}


def read_model_config(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """`{file stem: config}` from an open_clip config JSON, bare or as `{"model_cfg": ...}`.

    The second form is the `open_clip_config.json` of Hugging Face model repos; its
    `quick_gelu` entry is the one piece of knowledge about OpenAI weights that no
    tensor carries, which is why such a file is worth keeping next to the checkpoint.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise ScorerFormatError(f"Could not read the model config '{path}': {exc}") from None
    config = data.get("model_cfg", data) if isinstance(data, dict) else None
    if not isinstance(config, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(config):
        raise ScorerFormatError(f"'{path}' is not an open_clip model config (needs embed_dim, vision_cfg, text_cfg).")
    return {os.path.splitext(os.path.basename(path))[0]: config}


def sidecar_config(checkpoint: str | os.PathLike[str]) -> str | None:
    """`<checkpoint without suffix>.json` if it exists: the model's open_clip config kept beside it."""
    candidate = os.path.splitext(os.fspath(checkpoint))[0] + ".json"
    return candidate if os.path.isfile(candidate) else None


def _layers(shapes: Mapping[str, Sequence[int]], pattern: re.Pattern[str]) -> int:
    return len({int(m.group(1)) for k in shapes if (m := pattern.match(k))})


def _check_layout(shapes: Mapping[str, Sequence[int]], source: str) -> None:
    """Name the layout problem before any dimension is read: wrong layout, a tower missing."""
    if any(k.startswith(("vision_model.", "text_model.")) for k in shapes):
        raise ScorerFormatError(
            f"'{source}' is in the Hugging Face transformers layout (vision_model.* / text_model.*). "
            "The scorer reads the OpenCLIP layout (visual.*, transformer.*, token_embedding ...): use the "
            "model's open_clip_pytorch_model.bin or open_clip_model.safetensors instead."
        )
    if any(k.startswith(("visual.trunk.", "visual.layer1.", "text.")) for k in shapes):
        raise ScorerFormatError(
            f"'{source}' has a timm, ResNet or custom text tower; only OpenCLIP ViT models "
            f"({', '.join(KNOWN_ARCHITECTURES)}) are supported for scoring."
        )
    missing_text = [k for k in _TEXT_REQUIRED if k not in shapes]
    text_layers = _layers(shapes, _TEXT_BLOCK)
    if missing_text or not text_layers:
        what = missing_text + ([] if text_layers else ["transformer.resblocks.N.*"])
        lacks = "no text tower" if len(missing_text) == len(_TEXT_REQUIRED) and not text_layers else \
            "an incomplete text tower"
        raise ScorerFormatError(
            f"'{source}' has {lacks}: missing {', '.join(what)}. CLIP-T needs the full CLIP model; a CLIP "
            "*vision* file (as used by Load CLIP Vision) is not enough. Use the full OpenCLIP checkpoint "
            "(open_clip_pytorch_model.bin / open_clip_model.safetensors)."
        )
    missing_vision = [k for k in _VISION_REQUIRED if k not in shapes]
    if missing_vision or not _layers(shapes, _VISION_BLOCK):
        what = missing_vision + ([] if _layers(shapes, _VISION_BLOCK) else ["visual.transformer.resblocks.N.*"])
        raise ScorerFormatError(f"'{source}' has no complete image tower: missing {', '.join(what)}.")


def signature(shapes: Mapping[str, Sequence[int]], source: str = "checkpoint") -> Signature:
    """Read every dimension a ViT CLIP's tensor shapes reveal, or say what is missing."""
    _check_layout(shapes, source)
    conv, vis_pos = shapes["visual.conv1.weight"], shapes["visual.positional_embedding"]
    vproj, tproj = shapes["visual.proj"], shapes["text_projection"]
    patch, grid2 = int(conv[-1]), int(vis_pos[0]) - 1  # class token + grid x grid patches
    grid = round(grid2 ** 0.5)
    if grid * grid != grid2:
        raise ScorerFormatError(f"'{source}': visual.positional_embedding has {vis_pos[0]} rows, not 1 + a square.")
    if vproj[1] != tproj[1]:
        raise ScorerFormatError(
            f"'{source}': the image projection gives {vproj[1]}-wide embeddings and the text projection "
            f"{tproj[1]}-wide ones; the file mixes two models."
        )
    for block in ("visual.transformer.resblocks.0.mlp.c_fc.weight", "transformer.resblocks.0.mlp.c_fc.weight"):
        if block not in shapes:
            raise ScorerFormatError(f"'{source}' is missing {block}.")
    return Signature(
        embed_dim=int(vproj[1]),
        vision_width=int(conv[0]),
        vision_layers=_layers(shapes, _VISION_BLOCK),
        vision_mlp=int(shapes["visual.transformer.resblocks.0.mlp.c_fc.weight"][0]),
        patch_size=patch,
        image_size=grid * patch,
        text_width=int(shapes["ln_final.weight"][0]),
        text_layers=_layers(shapes, _TEXT_BLOCK),
        text_mlp=int(shapes["transformer.resblocks.0.mlp.c_fc.weight"][0]),
        context_length=int(shapes["positional_embedding"][0]),
        vocab_size=int(shapes["token_embedding.weight"][0]),
    )


def config_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes open_clip's `CLIP(**config)` has, built on the meta device (no memory)."""
    from open_clip.model import CLIP

    with torch.device("meta"):
        model = CLIP(**config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@functools.lru_cache(maxsize=1)
def known_architectures() -> tuple[Architecture, ...]:
    """The `KNOWN_ARCHITECTURES` with their signatures, from open_clip's bundled configs."""
    import open_clip

    found = []
    for name in KNOWN_ARCHITECTURES:
        config = open_clip.get_model_config(name)
        if config is None:  # an older open_clip without this config
            continue
        config = {k: config[k] for k in ("embed_dim", "vision_cfg", "text_cfg")}
        found.append(Architecture(name, config, signature(config_shapes(config), name)))
    return tuple(found)


def infer_architecture(
    shapes: Mapping[str, Sequence[int]] | Mapping[str, Tensor],
    source: str = "checkpoint",
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> Architecture:
    """Name the architecture of a state dict (or `{key: shape}`) from its shapes alone.

    `extra` adds candidate configs `{name: {"embed_dim", "vision_cfg", "text_cfg"}}`
    (for models open_clip does not bundle, or tiny test models); they are tried first.
    A `quick_gelu` entry in such a config is kept as `Architecture.quick_gelu`.
    """
    shapes = {k: tuple(v.shape) if isinstance(v, Tensor) else tuple(v) for k, v in shapes.items()}
    found = signature(shapes, source)
    candidates = []
    for name, config in (extra or {}).items():
        model_config = {k: config[k] for k in ("embed_dim", "vision_cfg", "text_cfg")}
        quick = config.get("quick_gelu")
        candidates.append(Architecture(name, model_config, signature(config_shapes(model_config), name),
                                       None if quick is None else bool(quick)))
    for arch in (*candidates, *known_architectures()):
        if arch.signature == found:
            return arch
    known = "; ".join(f"{a.name}: {a.signature.vision_layers}x{a.signature.vision_width} image, "
                      f"{a.signature.text_layers}x{a.signature.text_width} text, embedding {a.signature.embed_dim}"
                      for a in known_architectures())
    raise ScorerFormatError(
        f"'{source}' is an unknown CLIP architecture ({found.describe()}). Known: {known}."
    )


def openai_markers(state_dict: Mapping[str, Tensor]) -> bool:
    """True if the file carries OpenAI's extra entries (its weights expect QuickGELU)."""
    return any(k in state_dict for k in OPENAI_EXTRA_KEYS)


def check_keys(state_dict: Mapping[str, Tensor], expected: Mapping[str, Sequence[int]], source: str) -> None:
    """Reject missing, unexpected or mis-shaped keys by name, before anything is loaded."""
    present = set(state_dict) - set(OPENAI_EXTRA_KEYS)
    missing, unknown = set(expected) - present, present - set(expected)
    bad = sorted(k for k in present & set(expected)
                 if tuple(state_dict[k].shape) != tuple(expected[k]) and k != "logit_scale")
    if missing or unknown or bad:
        parts = [f"missing {_names(missing)}" if missing else "",
                 f"unexpected {_names(unknown)}" if unknown else "",
                 "wrong shapes " + ", ".join(f"{k} {tuple(state_dict[k].shape)} (expected {tuple(expected[k])})"
                                             for k in bad[:_MAX_LISTED]) if bad else ""]
        raise ScorerFormatError(f"'{source}' does not match its architecture: {'; '.join(p for p in parts if p)}.")
