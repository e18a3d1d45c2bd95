"""Apply IP-Adapter's inputs for weight over steps and per latent, and what they become for the patch.

Kept apart from `nodes/apply.py` so that node stays a list of inputs and a few
lines of execute. Every input here is optional, and its default (constant
schedule, no per-latent weights) builds nothing: the patch then runs the path it
ran before these inputs existed, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from comfy_api.latest import io

from ..ip_adapter import step_schedule
from ..ip_adapter.errors import ImagePromptError
from ..ip_adapter.per_latent import parse_latent_weights
from ..ip_adapter.regions import RegionalPrompt
from ..ip_adapter.step_schedule import WeightSchedule


def frame_inputs() -> list:
    """The optional inputs appended to ApplyIPAdapter (saved workflows without them keep today's behaviour)."""
    return [
        io.Combo.Input("weight_schedule", options=list(step_schedule.SCHEDULES), default=step_schedule.CONSTANT,
                       optional=True,
                       tooltip="Weight over the sampling steps, inside start_percent..end_percent. constant: "
                               "'weight' throughout. linear / ease in / ease out / ease in-out: from 'weight' at "
                               "start_percent to 'end_weight' at end_percent along that curve. per step list: "
                               "one weight per sampler step from 'step_weights'."),
        io.Float.Input("end_weight", default=1.0, min=-1.0, max=3.0, step=0.01, optional=True,
                       tooltip="Weight at end_percent for the curve schedules (start: 'weight')."),
        io.String.Input("step_weights", default="", multiline=True, optional=True,
                        tooltip="For 'per step list': one weight per sampler step, e.g. '1, 0.9, 0.8, ...'. A list "
                                "of another length is stretched over the steps (linear interpolation)."),
        io.String.Input("latent_weights", default="", optional=True,
                        tooltip="Optional multiplier per latent (frame / seed), in batch order, e.g. '1, 0.8, 0.6'. "
                                "1 number: all latents; N numbers: one each (with context windows: one per frame "
                                "of the whole batch). Empty: 1 for all."),
        io.Float.Input("latent_weights_list", optional=True, force_input=True,
                       tooltip="The same from another node: a FLOAT or a list of FLOATs (e.g. a weight curve over "
                               "frames). Wins over 'latent_weights' when connected."),
    ]


@dataclass(frozen=True)
class FrameOptions:
    """What the branch needs from these inputs: the weight folded into K/V, the schedule, the per-latent weights."""

    weight: float
    schedule: WeightSchedule | None
    latent_weights: tuple[float, ...] | None

    @property
    def inactive(self) -> bool:
        """True when no step and no latent gets an image term (the model is returned unchanged)."""
        if self.schedule is None:
            return self.weight == 0.0
        schedule = self.schedule
        values = (schedule.step_weights if schedule.curve_name is None
                  else (schedule.start_weight, schedule.end_weight))
        return all(v == 0.0 for v in values)


def frame_options(model: Any, weight: float, start_percent: float, end_percent: float,
                  weight_schedule: str = step_schedule.CONSTANT, end_weight: float = 1.0, step_weights: str = "",
                  latent_weights: str = "", latent_weights_list: Any = None) -> FrameOptions:
    """Read the inputs; the sigma -> t table of a curve comes from the model's own `percent_to_sigma`."""
    sampling = model.get_model_object("model_sampling") if weight_schedule in step_schedule.CURVES else None
    schedule = step_schedule.build_schedule(
        weight_schedule, float(weight), float(end_weight), step_weights,
        sampling.percent_to_sigma if sampling is not None else None, start_percent, end_percent)
    per_latent = parse_latent_weights(latent_weights, latent_weights_list)
    folded = schedule.reference if schedule is not None else float(weight)
    return FrameOptions(weight=folded, schedule=schedule, latent_weights=per_latent)


def refuse_frames_for_sd3(image_prompt: object, frames: dict[str, Any], node: str) -> None:
    """SD3.5's joint-block patch has no per-step schedule, per-latent weights or regions yet: say so, never ignore."""
    if isinstance(image_prompt, RegionalPrompt):
        raise ImagePromptError(f"{node}: IP-Adapter Region chains are not available for SD3.5 adapters yet; "
                               "connect Encode Image Prompt directly and use attn_mask for one region.")
    schedule = frames.get("weight_schedule", step_schedule.CONSTANT)
    if schedule != step_schedule.CONSTANT:
        raise ImagePromptError(f"{node}: weight_schedule '{schedule}' is not available for SD3.5 adapters yet; "
                               "set it to 'constant' (start_percent/end_percent still choose the window).")
    if str(frames.get("latent_weights") or "").strip() or frames.get("latent_weights_list") is not None:
        raise ImagePromptError(f"{node}: per-latent weights are not available for SD3.5 adapters yet; "
                               "leave latent_weights empty and disconnect latent_weights_list.")
