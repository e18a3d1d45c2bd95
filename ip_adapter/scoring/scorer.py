"""A full CLIP (both towers, projections, tokenizer) built by open_clip from a local file.

open_clip's own model classes run the math, so scores match what open_clip gives
for the same weights; this module only decides the architecture (from shapes, see
`checkpoint`), builds the model with `pretrained=None` semantics (nothing is ever
downloaded: the model is made on the meta device and the file's tensors are
assigned to it, so peak memory is one copy of the weights), and adds the
preprocessing and the metrics. open_clip is imported lazily: it takes seconds.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import metrics
from .checkpoint import (
    OPENAI_EXTRA_KEYS,
    Architecture,
    ScorerFormatError,
    check_keys,
    config_shapes,
    infer_architecture,
    openai_markers,
    read_model_config,
    read_state_dict,
    sidecar_config,
)
from .preprocess import clip_preprocess

logger = logging.getLogger(__name__)

#: "auto" picks QuickGELU only for files that carry OpenAI's extra entries (see `resolve_activation`).
ACTIVATIONS = ("auto", "gelu", "quick_gelu")

#: The vocabulary of the CLIP BPE tokenizer bundled with open_clip (`SimpleTokenizer`).
CLIP_BPE_VOCAB = 49408


@dataclass(frozen=True, eq=False)
class Scores:
    """Per-image CLIP-I and CLIP-T ([G] float32 on the CPU; clip_t None without a caption)."""

    clip_i: Tensor
    clip_t: Tensor | None

    @property
    def clip_i_mean(self) -> float:
        return metrics.mean_or_nan(self.clip_i)

    @property
    def clip_t_mean(self) -> float:
        return metrics.mean_or_nan(self.clip_t)


def resolve_activation(activation: str, state_dict: Mapping[str, Tensor], configured: bool | None = None) -> bool:
    """Whether to build with QuickGELU. The choice changes every embedding and no tensor shows it.

    OpenAI trained CLIP with QuickGELU; LAION's OpenCLIP models use GELU. "auto"
    follows a user-supplied config's `quick_gelu` (`configured`) if there is one,
    else OpenAI's extra entries (`input_resolution`, ...) in the file; OpenAI
    weights re-saved without them (e.g. timm's `...clip_224.openai` files) need
    "quick_gelu" (or their `open_clip_config.json`).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if activation == "auto":
        return configured if configured is not None else openai_markers(state_dict)
    return activation == "quick_gelu"


def _causal_mask(length: int) -> Tensor:
    """The text tower's causal additive mask (a non-persistent buffer, so not in any file)."""
    return torch.full((length, length), float("-inf")).triu_(1)


def build_model(architecture: Architecture, state_dict: Mapping[str, Tensor], quick_gelu: bool,
                dtype: torch.dtype = torch.float32, source: str = "checkpoint") -> torch.nn.Module:
    """open_clip's `CLIP` for `architecture` holding `state_dict`'s tensors (strict), in eval mode."""
    from open_clip.model import CLIP

    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    check_keys(state_dict, config_shapes(architecture.config), source)
    weights = {k: v for k, v in state_dict.items() if k not in OPENAI_EXTRA_KEYS}
    half = dtype in (torch.float16, torch.bfloat16)
    with torch.device("meta"):
        model = CLIP(**architecture.config, quick_gelu=quick_gelu, cast_dtype=dtype if half else None)
    if weights["logit_scale"].shape != model.logit_scale.shape:
        weights["logit_scale"] = weights["logit_scale"].reshape(model.logit_scale.shape)
    model.load_state_dict(weights, strict=True, assign=True)
    model.attn_mask = _causal_mask(architecture.signature.context_length)
    shapes_only = any(t.is_meta for t in weights.values())  # a shape check, not a usable model
    still_meta = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if still_meta and not shapes_only:
        raise RuntimeError(f"open_clip's CLIP has tensors no checkpoint provides: {still_meta}")
    model.float()  # files are often fp16; fp32 unless asked otherwise
    if half:  # open_clip's own mixed precision: matmul weights low, LayerNorms and embeddings fp32
        from open_clip.model import convert_weights_to_lp

        convert_weights_to_lp(model, dtype)
    return model.eval().requires_grad_(False)


class CLIPScorer:
    """CLIP-I and CLIP-T with one loaded OpenCLIP model.

    Holds open_clip's `CLIP` module (`self.model`, an nn.Module that callers may move
    between devices), its architecture, the activation it was built with and the
    bundled BPE tokenizer. Embeddings are computed on the module's current device.
    """

    def __init__(self, model: torch.nn.Module, architecture: Architecture, quick_gelu: bool, name: str):
        from open_clip.tokenizer import (
            SimpleTokenizer,  # bundled BPE vocabulary; no download
        )

        self.model = model
        self.architecture = architecture
        self.quick_gelu = quick_gelu
        self.name = name
        self.tokenizer = SimpleTokenizer(context_length=architecture.signature.context_length)

    @property
    def image_size(self) -> int:
        return self.architecture.signature.image_size

    @property
    def embed_dim(self) -> int:
        return self.architecture.signature.embed_dim

    def describe(self) -> str:
        act = "QuickGELU" if self.quick_gelu else "GELU"
        return f"{self.architecture.name} ({act}, {self.image_size} px, embedding {self.embed_dim})"

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        weight = self.model.visual.conv1.weight
        return weight.device, weight.dtype

    @torch.no_grad()
    def encode_images(self, images: Tensor, batch_size: int = 16) -> Tensor:
        """IMAGE [B, H, W, C] in 0..1 -> unit-norm image embeddings [B, D] (float32, CPU)."""
        device, dtype = self._device_dtype()
        out = []
        for chunk in images.split(batch_size):
            pixels = clip_preprocess(chunk.to(device), self.image_size).to(dtype)
            out.append(self.model.encode_image(pixels, normalize=True).float().cpu())
        return torch.cat(out)

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        """Captions -> token ids [N, context] (truncated to the context, EOT kept last)."""
        return self.tokenizer(list(texts))

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        """Captions -> unit-norm text embeddings [N, D] (float32, CPU)."""
        device, _ = self._device_dtype()
        tokens = self.tokenize(texts).to(device)
        return self.model.encode_text(tokens, normalize=True).float().cpu()

    def score(self, images: Tensor, references: Tensor, text: str | Sequence[str] | None = None,
              pairing: str = metrics.PAIRINGS[0]) -> Scores:
        """CLIP-I of `images` against `references` and CLIP-T against `text` (skipped if empty)."""
        generated = self.encode_images(images)
        clip_i = metrics.clip_i(generated, self.encode_images(references), pairing)
        captions = [text] if isinstance(text, str) else list(text or [])
        captions = [c for c in captions if c.strip()]
        clip_t = metrics.clip_t(generated, self.encode_texts(captions)) if captions else None
        return Scores(clip_i=clip_i, clip_t=clip_t)


def scorer_from_state_dict(state_dict: Mapping[str, Tensor], name: str = "checkpoint", activation: str = "auto",
                           dtype: torch.dtype = torch.float32,
                           architectures: Mapping[str, Mapping[str, Any]] | None = None) -> CLIPScorer:
    """Build a `CLIPScorer` from an OpenCLIP-layout state dict (see `load_scorer`)."""
    architecture = infer_architecture(state_dict, name, architectures)
    if architecture.signature.vocab_size != CLIP_BPE_VOCAB:
        raise ScorerFormatError(
            f"'{name}': the text tower has a {architecture.signature.vocab_size}-token vocabulary, but the CLIP "
            f"BPE tokenizer has {CLIP_BPE_VOCAB}; this model needs another tokenizer and is not supported."
        )
    quick_gelu = resolve_activation(activation, state_dict, architecture.quick_gelu)
    model = build_model(architecture, state_dict, quick_gelu, dtype, name)
    scorer = CLIPScorer(model, architecture, quick_gelu, name)
    logger.info("CLIP scorer '%s': %s (activation %s)", name, scorer.describe(), activation)
    return scorer


def load_scorer(path: str | os.PathLike[str], activation: str = "auto", dtype: torch.dtype = torch.float32,
                architectures: Mapping[str, Mapping[str, Any]] | None = None) -> CLIPScorer:
    """Load a full OpenCLIP checkpoint from a local file into a `CLIPScorer` (CPU; move `.model` later).

    `activation`: "auto" (a config's `quick_gelu`, else QuickGELU only for files with
    OpenAI's extra entries), "gelu" (LAION/OpenCLIP-trained models) or "quick_gelu"
    (OpenAI's weights). `architectures` adds configs `{name: {"embed_dim",
    "vision_cfg", "text_cfg"[, "quick_gelu"]}}` beyond open_clip's bundled ones; a
    `<checkpoint name>.json` beside the file (e.g. the model's `open_clip_config.json`,
    renamed) is added too.
    """
    candidates = dict(architectures or {})
    sidecar = sidecar_config(path)
    if sidecar is not None:
        candidates.update(read_model_config(sidecar))
        logger.info("Using the model config %s", sidecar)
    return scorer_from_state_dict(read_state_dict(path), os.path.basename(os.fspath(path)), activation, dtype,
                                  candidates)
