"""EncodeImagePrompt: reference image(s) -> image prompt tokens for one adapter."""

from __future__ import annotations

from comfy_api.latest import io
from torch import Tensor

from ..ip_adapter.errors import ImagePromptError
from ..ip_adapter.prompt import ImagePrompt, concat_images
from ..ip_adapter.spec import ENCODER_FILES, EncoderFeature
from ..utils.images import FIT_MODES, check_image_batch, pad_to_square, to_rgb
from . import comfy_bridge
from .types import ImagePromptSocket, IPAdapterSocket, LoadedAdapter


def _prepared(image: Tensor, fit: str, what: str) -> Tensor:
    """Validate an IMAGE input and make it RGB and (for 'pad') square."""
    check_image_batch(image, "EncodeImagePrompt", what)
    image = to_rgb(image.float())
    return pad_to_square(image) if fit == "pad" else image


def _features(adapter: LoadedAdapter, clip_vision: object, image: Tensor, fit: str, what: str) -> Tensor:
    spec = adapter.spec
    features = comfy_bridge.encode(clip_vision, image, spec.feature, crop=(fit != "stretch"))
    if features.shape[-1] != spec.clip_dim:
        raise ImagePromptError(
            f"EncodeImagePrompt: '{adapter.name}' needs the {spec.encoder} CLIP vision model "
            f"({spec.feature.value}, width {spec.clip_dim}), but the connected CLIP vision gives width "
            f"{features.shape[-1]}. Load {ENCODER_FILES.get(spec.encoder, spec.encoder)} with CLIPVisionLoader."
        )
    return features


class EncodeImagePrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EncodeImagePrompt",
            display_name="Encode Image Prompt",
            category="ip_adapter",
            description="Encodes reference images with CLIP vision and projects them into the adapter's image "
                        "tokens. Several images in the batch are concatenated into one prompt.",
            inputs=[
                IPAdapterSocket.Input("ip_adapter", tooltip="From Load IP-Adapter."),
                io.ClipVision.Input("clip_vision", tooltip="From ComfyUI's Load CLIP Vision; must be the encoder "
                                                           "the adapter was trained with (see the README table)."),
                io.Image.Input("image", tooltip="Reference image(s). A batch of several images is used together."),
                io.Combo.Input("fit", options=list(FIT_MODES), default=FIT_MODES[0],
                               tooltip="How a non-square image becomes the encoder's square input: "
                                       "center crop (as the reference), pad (keep everything), or stretch."),
                io.Image.Input("negative_image", optional=True,
                               tooltip="Optional: what to steer away from. Replaces the unconditional image "
                                       "tokens (default: the reference's zero encoding)."),
            ],
            outputs=[ImagePromptSocket.Output(display_name="image_prompt")],
        )

    @classmethod
    def execute(cls, ip_adapter: LoadedAdapter, clip_vision: object, image: Tensor, fit: str,
                negative_image: Tensor | None = None) -> io.NodeOutput:
        spec = ip_adapter.spec
        cond = _features(ip_adapter, clip_vision, _prepared(image, fit, "image"), fit, "image")
        count = cond.shape[0]
        if negative_image is not None:
            uncond = _features(ip_adapter, clip_vision, _prepared(negative_image, fit, "negative_image"), fit,
                               "negative_image")
            if uncond.shape[0] not in (1, count):
                raise ImagePromptError(
                    f"EncodeImagePrompt: 'negative_image' has {uncond.shape[0]} images; give 1 or as many as "
                    f"'image' ({count})."
                )
            uncond = uncond.expand(count, *uncond.shape[1:])
        elif spec.feature is EncoderFeature.IMAGE_EMBEDS:
            uncond = cond.new_zeros(cond.shape)
        else:
            uncond = comfy_bridge.encode_zero_pixels(clip_vision, spec.feature, count)
        comfy_bridge.load_for_projection(ip_adapter.patcher)
        prompt = ImagePrompt(
            cond=concat_images(ip_adapter.model.project(cond)).cpu(),
            uncond=concat_images(ip_adapter.model.project(uncond)).cpu(),
            spec=spec,
        )
        return io.NodeOutput(prompt)
