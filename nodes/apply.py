"""ApplyIPAdapter: a clone of MODEL whose cross-attention layers also attend to the image prompt."""

from __future__ import annotations

import logging
import math

from comfy_api.latest import io
from torch import Tensor

from ..ip_adapter import weighting
from ..ip_adapter.attention import EmbedsScaling
from ..ip_adapter.errors import ImagePromptError
from ..ip_adapter.masking import check_mask
from ..ip_adapter.patch import ImageBranch
from ..ip_adapter.prompt import ImagePrompt
from ..ip_adapter.regions import RegionalPrompt
from . import comfy_bridge, regional, sd3_nodes
from .frames import frame_inputs, frame_options, refuse_frames_for_sd3
from .types import ImagePromptSocket, IPAdapterSocket, LoadedAdapter

logger = logging.getLogger(__name__)

NODE = "ApplyIPAdapter"


class ApplyIPAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ApplyIPAdapter",
            display_name="Apply IP-Adapter",
            category="ip_adapter",
            description="Adds weight x Attn(Q, K_image, V_image) to the cross-attention layers (all, or those the weight "
                        "type picks; inside attn_mask if given) of a clone of "
                        "the model. The input model is not changed; chains of this node stack.",
            inputs=[
                io.Model.Input("model", tooltip="The model to patch (SD1.5, SDXL, Flux or SD3.5, matching the adapter)."),
                IPAdapterSocket.Input("ip_adapter", tooltip="From Load IP-Adapter."),
                ImagePromptSocket.Input("image_prompt", tooltip="From Encode Image Prompt, with the same adapter (or the "
                                                                 "regions of a chain of IP-Adapter Region nodes)."),
                io.Float.Input("weight", default=1.0, min=-1.0, max=3.0, step=0.01,
                               tooltip="Strength of the image prompt (lambda in the paper). 0 leaves the model "
                                       "unchanged; negative values push away from the image."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Fraction of the sampling schedule at which the image prompt starts "
                                       "acting (as in Apply ControlNet)."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Fraction of the schedule at which it stops acting."),
                # New inputs are optional and appended, so saved workflows stay valid.
                io.Combo.Input("weight_type", options=list(weighting.WEIGHT_TYPES), default=weighting.LINEAR,
                               optional=True,
                               tooltip="How the weight is spread over the UNet's layers (README: 'Weight types'; "
                                       "Flux: linear only). "
                                       "linear: all alike; ease in/out...: a curve over the layers; weak/strong: "
                                       "x0.2 on some blocks; style transfer / composition: only the blocks that "
                                       "carry style / layout (InstantStyle); precise: the other blocks push away "
                                       "from the reference (needs cfg > 1)."),
                io.Combo.Input("embeds_scaling", options=[m.value for m in EmbedsScaling],
                               default=EmbedsScaling.V_ONLY.value, optional=True,
                               tooltip="Where the weight enters the image attention. V only: weight x output (the "
                                       "paper). K+V: scales the image keys and values, which also sharpens the "
                                       "attention. C penalty: weight x layer width / 1280 first. K+mean(V): scales "
                                       "only the mean of V."),
                io.Mask.Input("attn_mask", optional=True,
                              tooltip="Optional. The image prompt acts only where the mask is 1 (blends in "
                                      "between). Any size: it is resized to each layer's grid. One mask for "
                                      "all latents, or one per latent."),
                io.String.Input("layer_weights", default="", multiline=True, optional=True,
                                tooltip="Optional, for experts: one multiplier per cross-attention layer, in "
                                        "checkpoint order (ip_adapter.1, .3, ...): 16 numbers for SD1.5, 70 for "
                                        "SDXL, 19 for Flux (one per double block), separated by commas, spaces or "
                                        "new lines, e.g. '1, 1, 0.5, 0, ...'. "
                                        "0 skips a layer. Replaces weight_type's table (precise types keep their "
                                        "inverted layers). Empty: use weight_type."),
                *frame_inputs(),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model: object, ip_adapter: LoadedAdapter, image_prompt: ImagePrompt | RegionalPrompt,
                weight: float, start_percent: float, end_percent: float, weight_type: str = weighting.LINEAR,
                embeds_scaling: str = EmbedsScaling.V_ONLY.value, attn_mask: Tensor | None = None,
                layer_weights: str = "", **frames: object) -> io.NodeOutput:
        if sd3_nodes.is_sd3(ip_adapter):
            refuse_frames_for_sd3(image_prompt, frames, NODE)
            return io.NodeOutput(sd3_nodes.apply(model, ip_adapter, image_prompt, weight, start_percent, end_percent,
                                                 weight_type, embeds_scaling, attn_mask, layer_weights))
        _check_inputs(model, ip_adapter, image_prompt, weight, start_percent, end_percent)
        options = frame_options(model, weight, start_percent, end_percent, **frames)  # type: ignore[arg-type]
        base = ip_adapter.spec.base
        explicit = weighting.parse_layer_weights(layer_weights, base, f"{NODE} layer_weights")
        plan = weighting.layer_plan(base, weight_type, explicit, f"{NODE} weight_type")
        weighting.check_embeds_scaling(base, embeds_scaling, f"{NODE} embeds_scaling")
        mask = check_mask(attn_mask, f"{NODE} attn_mask") if attn_mask is not None else None
        if options.inactive or not plan.active():
            if not options.inactive:
                logger.info("ApplyIPAdapter: every layer multiplier is 0; the model is returned unchanged.")
            return io.NodeOutput(model.clone())
        window = comfy_bridge.sigma_window(model, start_percent, end_percent, NODE)
        patched = model
        for prompt, factor, region_mask, where in regional.parts(image_prompt, mask):
            branch = ImageBranch(
                adapter=ip_adapter.model, prompt=prompt, weight=options.weight * factor, window=window,
                plan=plan, models=(ip_adapter.patcher,), embeds_scaling=_scaling(embeds_scaling), mask=region_mask,
                where=where, schedule=options.schedule, latent_weights=options.latent_weights,
            )
            patched = comfy_bridge.patched_clone(patched, branch)
        return io.NodeOutput(patched if patched is not model else model.clone())


def _check_inputs(model: object, ip_adapter: LoadedAdapter, image_prompt: ImagePrompt, weight: float,
                  start_percent: float, end_percent: float) -> None:
    if not math.isfinite(weight):
        # ComfyUI's range check lets NaN through (NaN > max is False); it would turn every sample to NaN.
        raise ImagePromptError(f"ApplyIPAdapter: weight is {weight}; give a number between -1 and 3.")
    if start_percent > end_percent:
        raise ImagePromptError(
            f"ApplyIPAdapter: start_percent ({start_percent}) is after end_percent ({end_percent}); "
            "set start_percent <= end_percent."
        )
    if image_prompt.spec != ip_adapter.spec:
        raise ImagePromptError(
            f"ApplyIPAdapter: the image prompt was encoded for a {image_prompt.spec.describe()} adapter, "
            f"but '{ip_adapter.name}' is {ip_adapter.spec.describe()}. Encode with the same adapter."
        )
    comfy_bridge.check_model_fits(model, ip_adapter.spec, ip_adapter.name, NODE)


def _scaling(name: str) -> EmbedsScaling:
    try:
        return EmbedsScaling(name)
    except ValueError:
        raise ImagePromptError(
            f"ApplyIPAdapter embeds_scaling: unknown '{name}'; choose one of {[m.value for m in EmbedsScaling]}."
        ) from None
