"""What EncodeImagePrompt and ImagePromptFromCLIPVision share once they hold CLIP features.

Both nodes end the same way: check the features fit the adapter, decide where
the unconditional tokens come from (a negative, zeros, or the encoding of zero
pixels), then project on the adapter's device. Keeping that here means the two
nodes cannot drift apart in the rule the authors' code fixes for each variant.
"""

from __future__ import annotations

from torch import Tensor

from ..ip_adapter.combine import CombineMode, image_prompt_from_features
from ..ip_adapter.errors import ImagePromptError
from ..ip_adapter.prompt import ImagePrompt
from ..ip_adapter.spec import ENCODER_FILES, EncoderFeature
from . import comfy_bridge
from .types import LoadedAdapter


def check_feature_width(adapter: LoadedAdapter, features: Tensor, node: str, source: str) -> None:
    """Refuse features from another CLIP vision tower than the adapter's, naming the file to load."""
    spec = adapter.spec
    if features.shape[-1] != spec.clip_dim:
        raise ImagePromptError(
            f"{node}: '{adapter.name}' needs the {spec.encoder} CLIP vision model "
            f"({spec.feature.value}, width {spec.clip_dim}), but '{source}' gives width "
            f"{features.shape[-1]}. Load {ENCODER_FILES.get(spec.encoder, spec.encoder)} with CLIPVisionLoader."
        )


def check_negative_count(negatives: int, images: int, node: str, negative: str, image: str) -> None:
    if negatives not in (1, images):
        raise ImagePromptError(
            f"{node}: '{negative}' has {negatives} images; give 1 or as many as '{image}' ({images})."
        )


def unconditional_features(adapter: LoadedAdapter, negative: Tensor | None, clip_vision: object | None,
                           images: int, node: str, inputs: tuple[str, str]) -> Tensor | None:
    """The features the unconditional tokens are projected from.

    A negative's features when one is given (1, or one per reference image);
    None for base adapters (their unconditional tokens are the projection of
    zeros); otherwise the encoding of zero pixels by `clip_vision`, as the
    authors define it for plus and face adapters, computed once per CLIP vision
    model and kept with the adapter (`LoadedAdapter.zero_pixels`). `inputs` names the node's
    (negative, image) inputs for the error messages.
    """
    negative_input, image_input = inputs
    if negative is not None:
        check_negative_count(negative.shape[0], images, node, negative_input, image_input)
        return negative
    feature = adapter.spec.feature
    if feature is EncoderFeature.IMAGE_EMBEDS:
        return None
    if clip_vision is None:
        raise ImagePromptError(
            f"{node}: '{adapter.name}' is a {adapter.spec.variant} adapter; its unconditional tokens are the "
            f"encoding of zero pixels, which a CLIP Vision Encode output does not carry. Connect the CLIP vision "
            f"model to 'clip_vision' (or a negative encoding to '{negative_input}')."
        )
    uncond = adapter.zero_pixels.get(clip_vision, comfy_bridge.zero_pixel_key(clip_vision, feature),
                                     lambda: comfy_bridge.encode_zero_pixels(clip_vision, feature, 1))
    check_feature_width(adapter, uncond, node, "clip_vision")
    return uncond


def project_prompt(adapter: LoadedAdapter, cond: Tensor, uncond: Tensor | None, combine_embeds: str,
                   weights: tuple[float, ...] | None) -> ImagePrompt:
    """Combine the images' features and project them with the adapter, loaded where ComfyUI puts it."""
    comfy_bridge.load_for_projection(adapter.patcher)
    return image_prompt_from_features(adapter.model, cond, uncond, CombineMode(combine_embeds), weights)
