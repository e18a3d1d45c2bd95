"""What an IP-Adapter checkpoint is, as one immutable value.

`AdapterSpec` replaces a pile of `is_plus`/`is_sdxl`/`is_full` flags: everything
downstream (which CLIP feature to encode, how many tokens, which model family and
which of its layers) is read from it, and it is derived from tensor keys and
shapes only, never from a file name (`loading.detect` asks each family's detector).

The model *family* (`ModelFamily`) says how the adapter is injected: UNet
adapters (SD1.5, SDXL) patch cross-attention layers, Flux adapters patch
double-stream DiT blocks, and an MMDiT family (SD3.5) patches joint blocks.
Each family's injection lives in `ip_adapter.families.<family>`; the base model
(`BaseModel`) picks the family, so a spec can never name a base of one family and
an injection of another.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class ModelFamily(str, Enum):
    """How an adapter reaches its model: which ComfyUI hook, which kind of layer (see `ip_adapter.families`)."""

    UNET = "UNet"  # attn2 replace per cross-attention layer (SD1.5, SDXL)
    FLUX = "Flux"  # patches_replace["dit"] per double-stream block


class BaseModel(str, Enum):
    """The model whose layers the adapter targets."""

    SD15 = "SD1.5"
    SDXL = "SDXL"
    FLUX = "Flux"


#: The family each base model belongs to (a new base model adds one row here).
FAMILY_OF_BASE: dict[BaseModel, ModelFamily] = {
    BaseModel.SD15: ModelFamily.UNET,
    BaseModel.SDXL: ModelFamily.UNET,
    BaseModel.FLUX: ModelFamily.FLUX,
}


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
#: image_embeds: OpenAI ViT-L/14 projects to 768, ViT-H/14 to 1024, ViT-bigG/14 to 1280.
#: penultimate hidden states: ViT-H/14 is 1280 wide, ViT-bigG/14 1664.
_ENCODERS: dict[tuple[EncoderFeature, int], str] = {
    (EncoderFeature.IMAGE_EMBEDS, 768): "ViT-L/14",
    (EncoderFeature.IMAGE_EMBEDS, 1024): "ViT-H/14",
    (EncoderFeature.IMAGE_EMBEDS, 1280): "ViT-bigG/14",
    (EncoderFeature.PENULTIMATE, 1280): "ViT-H/14",
    (EncoderFeature.PENULTIMATE, 1664): "ViT-bigG/14",
}

#: The file users download for each encoder (what README and errors point to).
ENCODER_FILES: dict[str, str] = {
    "ViT-L/14": "OpenAI's clip-vit-large-patch14 (its model.safetensors, e.g. saved as clip-vit-large-patch14.safetensors)",
    "ViT-H/14": "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors",
    "ViT-bigG/14": "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors",
}


class UncondSource(str, Enum):
    """Where the unconditional image tokens come from when no negative image is given (the authors' rule)."""

    ZERO_FEATURES = "projection of zero features"  # UNet base adapters (image_embeds)
    ZERO_PIXELS = "encoding of zero pixels"  # plus, plus-face, full-face (zeros after CLIP normalisation)
    BLACK_IMAGE = "encoding of a black image"  # XLabs Flux: both XLabs' and diffusers' pipelines encode np.zeros


def encoder_name(feature: EncoderFeature, width: int) -> str:
    """Name the CLIP vision tower that produces `feature` with this width."""
    return _ENCODERS.get((feature, width), f"an unknown CLIP vision model ({feature.value} width {width})")


@dataclass(frozen=True)
class AdapterSpec:
    """Everything the pack needs to know about one IP-Adapter checkpoint.

    Attributes:
        base: SD1.5, SDXL or Flux (from the keys, the context width and the layer count);
            it decides the `family`.
        projection: which projection model turns CLIP features into tokens.
        feature: which CLIP output the projection consumes.
        clip_dim: width of that CLIP feature (1024, 1280, 1664).
        cross_attention_dim: width of the tokens (768 for SD1.5, 2048 for SDXL, 4096 for Flux).
        tokens: image tokens per reference image (4, 16, or 257 for full-face).
        layer_indices: checkpoint layer indices, ascending (`ip_adapter.N.*` for UNets,
            `double_blocks.N.*` for Flux).
        layer_widths: width of each of those layers' K/V (the host attention width).
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
    def uncond_source(self) -> UncondSource:
        """The reference pipeline's unconditional image tokens for this adapter (see README)."""
        if self.family is ModelFamily.FLUX:
            return UncondSource.BLACK_IMAGE
        if self.feature is EncoderFeature.IMAGE_EMBEDS:
            return UncondSource.ZERO_FEATURES
        return UncondSource.ZERO_PIXELS

    @property
    def family(self) -> ModelFamily:
        """How this adapter is injected (decided by `base`)."""
        return FAMILY_OF_BASE[self.base]

    @property
    def layer_count(self) -> int:
        return len(self.layer_indices)

    def describe(self) -> str:
        """One line for logs and the UI, e.g. 'SD1.5 plus (16 tokens, ViT-H/14, 16 layers)'."""
        return (
            f"{self.base.value} {self.variant} ({self.tokens} tokens, {self.encoder}, "
            f"{self.layer_count} layers)"
        )
