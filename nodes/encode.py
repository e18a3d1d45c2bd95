"""EncodeImagePrompt: reference image(s) -> image prompt tokens for one adapter."""

from __future__ import annotations

from comfy_api.latest import io
from torch import Tensor

from ..ip_adapter.combine import CombineMode, parse_image_weights
from ..utils.images import FIT_MODES, check_image_batch, pad_to_square, to_rgb
from . import comfy_bridge, sd3_nodes
from .prompt_assembly import check_feature_width, combine_inputs, project_prompt, unconditional_features
from .types import ImagePromptSocket, IPAdapterSocket, LoadedAdapter


def _prepared(image: Tensor, fit: str, what: str) -> Tensor:
    """Validate an IMAGE input and make it RGB and (for 'pad') square."""
    check_image_batch(image, "EncodeImagePrompt", what)
    image = to_rgb(image.float())
    return pad_to_square(image) if fit == "pad" else image


def _features(adapter: LoadedAdapter, clip_vision: object, image: Tensor, fit: str) -> Tensor:
    features = comfy_bridge.encode(clip_vision, image, adapter.spec.feature, crop=(fit != "stretch"))
    check_feature_width(adapter, features, "EncodeImagePrompt", "clip_vision")
    return features


class EncodeImagePrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EncodeImagePrompt",
            display_name="IP-Adapter Encode Image Prompt",
            category="ip_adapter",
            description="Encodes reference images with CLIP vision and projects them into the adapter's image "
                        "tokens. Several images in the batch are concatenated into one prompt, or combined "
                        "(add, subtract, average, norm average) as combine_embeds says.",
            inputs=[
                IPAdapterSocket.Input("ip_adapter", tooltip="From Load IP-Adapter."),
                io.ClipVision.Input("clip_vision", tooltip="From ComfyUI's Load CLIP Vision; must be the encoder "
                                                           "the adapter was trained with (see the README table)."),
                io.Image.Input("image", tooltip="Reference image(s). A batch of several images makes one prompt (see "
                                                        "combine_embeds)."),
                io.Combo.Input("fit", options=list(FIT_MODES), default=FIT_MODES[0],
                               tooltip="How a non-square image becomes the encoder's square input: "
                                       "center crop (as the reference), pad (keep everything), or stretch."),
                io.Image.Input("negative_image", optional=True,
                               tooltip="Optional: what to steer away from. Replaces the unconditional image "
                                       "tokens (default: the reference's zero encoding). 1 image, or one per "
                                       "reference image."),
                *combine_inputs(),
            ],
            outputs=[ImagePromptSocket.Output(display_name="image_prompt")],
        )

    @classmethod
    def execute(cls, ip_adapter: LoadedAdapter, clip_vision: object, image: Tensor, fit: str,
                negative_image: Tensor | None = None, combine_embeds: str = CombineMode.CONCAT.value,
                image_weights: str = "") -> io.NodeOutput:
        if sd3_nodes.is_sd3(ip_adapter):
            negative = None if negative_image is None else _prepared(negative_image, fit, "negative_image")
            return io.NodeOutput(sd3_nodes.encode(ip_adapter, clip_vision, _prepared(image, fit, "image"), negative,
                                                  fit, combine_embeds, image_weights, "EncodeImagePrompt"))
        cond = _features(ip_adapter, clip_vision, _prepared(image, fit, "image"), fit)
        weights = parse_image_weights(image_weights, cond.shape[0], "EncodeImagePrompt 'image_weights'")
        negative = (None if negative_image is None
                    else _features(ip_adapter, clip_vision, _prepared(negative_image, fit, "negative_image"), fit))
        uncond = unconditional_features(ip_adapter, negative, clip_vision, cond.shape[0], "EncodeImagePrompt",
                                        ("negative_image", "image"))
        return io.NodeOutput(project_prompt(ip_adapter, cond, uncond, combine_embeds, weights))
