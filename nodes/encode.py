"""EncodeImagePrompt: reference image(s) -> image prompt tokens for one adapter."""

from __future__ import annotations

from comfy_api.latest import io
from torch import Tensor

from ..ip_adapter.combine import CombineMode
from ..utils.images import FIT_MODES
from ..utils.tiling import CROP_POSITIONS
from . import sd3_nodes
from .prompt_assembly import combine_inputs
from .reference_encoding import DEFAULT_CHUNK, encode_references, sd3_rows
from .types import ImagePromptSocket, IPAdapterSocket, LoadedAdapter


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
                                       "center crop (as the reference; see crop_position), pad (keep everything, "
                                       "smaller), stretch, or tiled (squares over the whole image at full "
                                       "resolution, their tokens side by side; README: 'Non-square references')."),
                io.Image.Input("negative_image", optional=True,
                               tooltip="Optional: what to steer away from. Replaces the unconditional image "
                                       "tokens (default: the reference's zero encoding). 1 image, or one per "
                                       "reference image."),
                *combine_inputs(),
                io.Combo.Input("crop_position", options=list(CROP_POSITIONS), default="center", optional=True,
                               tooltip="Where 'center crop' cuts its square: top for a portrait's head, left/right "
                                       "for a subject at a landscape's side. Other fits ignore it."),
                io.Int.Input("encode_chunk", default=DEFAULT_CHUNK, min=1, max=4096, optional=True,
                             tooltip="Images per CLIP vision call. Long batches (animation frames) are encoded and "
                                     "projected this many at a time, keeping only the tokens, so memory stays "
                                     "bounded. Lower it if encoding runs out of memory."),
            ],
            outputs=[ImagePromptSocket.Output(display_name="image_prompt")],
        )

    @classmethod
    def execute(cls, ip_adapter: LoadedAdapter, clip_vision: object, image: Tensor, fit: str,
                negative_image: Tensor | None = None, combine_embeds: str = CombineMode.CONCAT.value,
                image_weights: str = "", crop_position: str = "center",
                encode_chunk: int = DEFAULT_CHUNK) -> io.NodeOutput:
        if sd3_nodes.is_sd3(ip_adapter):
            rows, negative = sd3_rows(image, negative_image, fit, crop_position)
            return io.NodeOutput(sd3_nodes.encode(ip_adapter, clip_vision, rows, negative, fit, combine_embeds,
                                                  image_weights, "EncodeImagePrompt"))
        return io.NodeOutput(encode_references(ip_adapter, clip_vision, image, fit, crop_position, negative_image,
                                               combine_embeds, image_weights, encode_chunk))
