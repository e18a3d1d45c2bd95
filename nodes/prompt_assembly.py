"""What EncodeImagePrompt and ImagePromptFromCLIPVision share: their combine inputs, and the end once they hold
CLIP features.

Both nodes end the same way: check the features fit the adapter, decide where
the unconditional tokens come from (a negative, zeros, or the encoding of zero
pixels), then project on the adapter's device. Keeping that here means the two
nodes cannot drift apart in the rule the authors' code fixes for each variant.
"""

from __future__ import annotations

from comfy_api.latest import io
from torch import Tensor

from ..ip_adapter.combine import COMBINE_MODES, CombineMode, image_prompt_from_features
from ..ip_adapter.errors import ImagePromptError
from ..ip_adapter.prompt import ImagePrompt
from ..ip_adapter.spec import ENCODER_FILES, UncondSource
from . import comfy_bridge
from .types import LoadedAdapter

#: Tooltips of the inputs `combine_inputs` makes.
COMBINE_TOOLTIP = (
    "How several reference images (a batch) become one prompt. concat: each image's tokens side by side "
    "(default). one per latent: image i conditions latent i only (frames, seeds; a batch of 1 serves all). "
    "add: sum. subtract: the first image minus the average of the others. average: mean. "
    "norm average: mean of the images each divided by the images' joint norm (per element). All but concat "
    "combine the CLIP features before the adapter's projection, as ComfyUI_IPAdapter_plus does; several "
    "negative images are then averaged."
)
WEIGHTS_TOOLTIP = (
    "Optional weight per reference image, in batch order, separated by commas: e.g. '1.0, 0.5' for two "
    "images. Each image's CLIP features are multiplied by its weight before combining. Empty: all 1."
)


def combine_inputs() -> list:
    """combine_embeds and image_weights, the inputs EncodeImagePrompt and ImagePromptFromCLIPVision share."""
    return [
        io.Combo.Input("combine_embeds", options=list(COMBINE_MODES), default=CombineMode.CONCAT.value,
                       optional=True, tooltip=COMBINE_TOOLTIP),
        io.String.Input("image_weights", default="", optional=True, tooltip=WEIGHTS_TOOLTIP),
    ]


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
    otherwise the reference pipeline's rule (`AdapterSpec.uncond_source`): None
    for UNet base adapters (the projection of zeros), the encoding of zero
    *normalised* pixels for plus and face adapters, the encoding of a black image
    for XLabs Flux adapters (both XLabs' and diffusers' Flux pipelines encode
    `np.zeros` as the negative image). `inputs` names the node's (negative,
    image) inputs for the error messages. The zero-pixel and black-image encodings are
    constant for a given CLIP vision model, so they are computed once per model and kept with
    the adapter (`LoadedAdapter.zero_pixels`).
    """
    negative_input, image_input = inputs
    if negative is not None:
        check_negative_count(negative.shape[0], images, node, negative_input, image_input)
        return negative
    source = adapter.spec.uncond_source
    if source is UncondSource.ZERO_FEATURES:
        return None
    if clip_vision is None:
        raise ImagePromptError(
            f"{node}: '{adapter.name}' is a {adapter.spec.variant} adapter; its unconditional tokens are the "
            f"{source.value}, which a CLIP Vision Encode output does not carry. Connect the CLIP vision "
            f"model to 'clip_vision' (or a negative encoding to '{negative_input}')."
        )
    feature = adapter.spec.feature
    if source is UncondSource.BLACK_IMAGE:
        def encode() -> Tensor:
            return comfy_bridge.encode(clip_vision, comfy_bridge.black_image(), feature, crop=True)
    else:
        def encode() -> Tensor:
            return comfy_bridge.encode_zero_pixels(clip_vision, feature, 1)
    key = (source, *comfy_bridge.zero_pixel_key(clip_vision, feature))
    uncond = adapter.zero_pixels.get(clip_vision, key, encode)
    check_feature_width(adapter, uncond, node, "clip_vision")
    return uncond


def project_prompt(adapter: LoadedAdapter, cond: Tensor, uncond: Tensor | None, combine_embeds: str,
                   weights: tuple[float, ...] | None) -> ImagePrompt:
    """Combine the images' features and project them with the adapter, loaded where ComfyUI puts it."""
    comfy_bridge.load_for_projection(adapter.patcher)
    return image_prompt_from_features(adapter.model, cond, uncond, CombineMode(combine_embeds), weights)
