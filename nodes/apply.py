"""ApplyIPAdapter: a clone of MODEL whose cross-attention layers also attend to the image prompt."""

from __future__ import annotations

from comfy_api.latest import io

from ..ip_adapter.errors import ImagePromptError
from ..ip_adapter.patch import ImageBranch
from ..ip_adapter.prompt import ImagePrompt
from . import comfy_bridge
from .types import ImagePromptSocket, IPAdapterSocket, LoadedAdapter


class ApplyIPAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ApplyIPAdapter",
            display_name="Apply IP-Adapter",
            category="ip_adapter",
            description="Adds weight x Attn(Q, K_image, V_image) to every cross-attention layer of a clone of "
                        "the model. The input model is not changed; chains of this node stack.",
            inputs=[
                io.Model.Input("model", tooltip="The UNet to patch (SD1.5 or SDXL, matching the adapter)."),
                IPAdapterSocket.Input("ip_adapter", tooltip="From Load IP-Adapter."),
                ImagePromptSocket.Input("image_prompt", tooltip="From Encode Image Prompt, with the same adapter."),
                io.Float.Input("weight", default=1.0, min=-1.0, max=3.0, step=0.01,
                               tooltip="Strength of the image prompt (lambda in the paper). 0 leaves the model "
                                       "unchanged; negative values push away from the image."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Fraction of the sampling schedule at which the image prompt starts "
                                       "acting (as in Apply ControlNet)."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Fraction of the schedule at which it stops acting."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model: object, ip_adapter: LoadedAdapter, image_prompt: ImagePrompt, weight: float,
                start_percent: float, end_percent: float) -> io.NodeOutput:
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
        comfy_bridge.check_model_fits(model, ip_adapter.spec, ip_adapter.name)
        if weight == 0.0:
            return io.NodeOutput(model.clone())
        branch = ImageBranch(
            adapter=ip_adapter.model,
            prompt=image_prompt,
            weight=float(weight),
            window=comfy_bridge.sigma_window(model, start_percent, end_percent),
            models=(ip_adapter.patcher,),
        )
        return io.NodeOutput(comfy_bridge.patched_clone(model, branch, ip_adapter.spec))
