"""ImagePromptFromCLIPVision: an image prompt from ComfyUI's own CLIP Vision Encode output.

Existing graphs already encode references with `CLIPVisionEncode` (for unCLIP or
style models); this node reuses that encoding instead of running the tower again.
The unconditional tokens of plus/full-face adapters are the encoding of zero
*normalised* pixels, which no CLIP_VISION_OUTPUT carries: for those adapters the
node needs the CLIP vision model itself (optional input `clip_vision`), or an
explicit negative encoding.
"""

from __future__ import annotations

from comfy_api.latest import io

from ..ip_adapter.combine import CombineMode, parse_image_weights
from . import comfy_bridge
from .prompt_assembly import check_feature_width, combine_inputs, project_prompt, unconditional_features
from .types import ImagePromptSocket, IPAdapterSocket, LoadedAdapter

NODE = "ImagePromptFromCLIPVision"


class ImagePromptFromCLIPVision(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE,
            display_name="Image Prompt from CLIP Vision Output",
            category="ip_adapter",
            description="Projects the output of ComfyUI's CLIP Vision Encode into the adapter's image tokens "
                        "(image_embeds or penultimate hidden states, as the adapter needs). Equal to Encode Image "
                        "Prompt with fit 'center crop' (crop: center) or 'stretch' (crop: none).",
            inputs=[
                IPAdapterSocket.Input("ip_adapter", tooltip="From Load IP-Adapter."),
                io.ClipVisionOutput.Input("clip_vision_output",
                                          tooltip="From ComfyUI's CLIP Vision Encode, run with the encoder the "
                                                  "adapter was trained with. A batch of images is several "
                                                  "references (see combine_embeds)."),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="Plus, plus-face and full-face adapters: connect the same CLIP vision "
                                            "model; it encodes zero pixels for the unconditional tokens (the "
                                            "authors' definition). Not needed for base adapters or when "
                                            "'negative' is connected."),
                io.ClipVisionOutput.Input("negative", optional=True,
                                          tooltip="Optional CLIP Vision Encode output of a negative image: replaces "
                                                  "the unconditional tokens. 1 image, or one per reference."),
                *combine_inputs(),
            ],
            outputs=[ImagePromptSocket.Output(display_name="image_prompt")],
        )

    @classmethod
    def execute(cls, ip_adapter: LoadedAdapter, clip_vision_output: object, clip_vision: object | None = None,
                negative: object | None = None, combine_embeds: str = CombineMode.CONCAT.value,
                image_weights: str = "") -> io.NodeOutput:
        feature = ip_adapter.spec.feature
        cond = comfy_bridge.output_feature(clip_vision_output, feature, f"{NODE}: 'clip_vision_output'")
        check_feature_width(ip_adapter, cond, NODE, "clip_vision_output")
        weights = parse_image_weights(image_weights, cond.shape[0], f"{NODE} 'image_weights'")
        negative_features = None
        if negative is not None:
            negative_features = comfy_bridge.output_feature(negative, feature, f"{NODE}: 'negative'")
            check_feature_width(ip_adapter, negative_features, NODE, "negative")
        uncond = unconditional_features(ip_adapter, negative_features, clip_vision, cond.shape[0], NODE,
                                        ("negative", "clip_vision_output"))
        return io.NodeOutput(project_prompt(ip_adapter, cond, uncond, combine_embeds, weights))
