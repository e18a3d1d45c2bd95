"""What an IP-Adapter checkpoint is, as one immutable value.

`AdapterSpec` replaces a pile of `is_plus`/`is_sdxl`/`is_full` flags: everything
downstream (which CLIP feature to encode, how many tokens, which UNet slots) is
read from it, and it is derived from tensor keys and shapes only, never from a
file name (see `state_dict.detect_spec`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class BaseModel(str, Enum):
    """The Stable Diffusion family whose cross-attention layers the adapter targets."""

    SD15 = "SD1.5"
    SDXL = "SDXL"


class ProjectionKind(str, Enum):
    """How CLIP features become context tokens (authors' class names in brackets)."""

    LINEAR = "linear"  # ImageProjModel: Linear + reshape + LayerNorm
    MLP = "mlp"  # MLPProjModel: Linear, GELU, Linear, LayerNorm (full-face)
    RESAMPLER = "resampler"  # Perceiver Resampler (plus, plus-face)


class EncoderFeature(str, Enum):
    """Which output of the CLIP vision tower the projection consumes."""

    IMAGE_EMBEDS = "image_embeds"  # pooled, projected embedding (base variants)
    PENULTIMATE = "penultimate_hidden_states"  # all tokens of the second-to-last layer


#: CLIP vision towers by the width of the feature an adapter consumes.
#: image_embeds: ViT-H/14 projects to 1024, ViT-bigG/14 to 1280.
#: penultimate hidden states: ViT-H/14 is 1280 wide, ViT-bigG/14 1664.
_ENCODERS: dict[tuple[EncoderFeature, int], str] = {
    (EncoderFeature.IMAGE_EMBEDS, 1024): "ViT-H/14",
    (EncoderFeature.IMAGE_EMBEDS, 1280): "ViT-bigG/14",
    (EncoderFeature.PENULTIMATE, 1280): "ViT-H/14",
    (EncoderFeature.PENULTIMATE, 1664): "ViT-bigG/14",
}

#: The file users download for each encoder (what README and errors point to).
ENCODER_FILES: dict[str, str] = {
    "ViT-H/14": "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors",
    "ViT-bigG/14": "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors",
}


def encoder_name(feature: EncoderFeature, width: int) -> str:
    """Name the CLIP vision tower that produces `feature` with this width."""
    return _ENCODERS.get((feature, width), f"an unknown CLIP vision model ({feature.value} width {width})")


@dataclass(frozen=True)
class AdapterSpec:
    """Everything the pack needs to know about one IP-Adapter checkpoint.

    Attributes:
        base: SD1.5 or SDXL (from the text context width and the layer count).
        projection: which projection model turns CLIP features into tokens.
        feature: which CLIP output the projection consumes.
        clip_dim: width of that CLIP feature (1024, 1280, 1664).
        cross_attention_dim: width of the tokens (768 for SD1.5, 2048 for SDXL).
        tokens: image tokens per reference image (4, 16, or 257 for full-face).
        layer_indices: checkpoint indices `N` of `ip_adapter.N.*`, ascending.
        layer_widths: width of each of those layers' K/V (the UNet attention width).
        variant: a human name ("base", "plus", "full-face") for messages and UIs.
    """

    base: BaseModel
    projection: ProjectionKind
    feature: EncoderFeature
    clip_dim: int
    cross_attention_dim: int
    tokens: int
    layer_indices: tuple[int, ...]
    layer_widths: tuple[int, ...]
    variant: str

    @property
    def encoder(self) -> str:
        """The CLIP vision tower this adapter was trained with."""
        return encoder_name(self.feature, self.clip_dim)

    @property
    def layer_count(self) -> int:
        return len(self.layer_indices)

    def describe(self) -> str:
        """One line for logs and the UI, e.g. 'SD1.5 plus (16 tokens, ViT-H/14, 16 layers)'."""
        return (
            f"{self.base.value} {self.variant} ({self.tokens} tokens, {self.encoder}, "
            f"{self.layer_count} layers)"
        )
