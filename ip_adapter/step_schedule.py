"""A weight that changes over the sampling steps: a curve from a start to an end weight, or one per step.

Why: an on/off window (start_percent..end_percent) is all the base node offers;
users ask for a ramp (another Flux pack: start and end weight) or an explicit
list (InvokeAI: one weight per step). Both are decided once per step from the
step's sigma, *on the sigma's device*: nothing here reads a tensor back to the
host, so a GPU never waits (the per-layer `.item()` trap).

How the weight enters: the branch folds one *reference* weight into the image
V (or K and V, see `EmbedsScaling`) as usual, and the schedule multiplies the
image term by `w(step) / reference`. For "V only" (the paper) that is exactly
`w(step) * Attn(Q, K', V')`; for the K+V modes the keys keep the reference
weight's sharpening and only the output follows the schedule.

Curves run over the window: t = 0 at start_percent, t = 1 at end_percent. The
sigma of a step is mapped to t with a table of (sigma, t) knots the node builds
from the model's own percent -> sigma conversion, interpolated on the device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .errors import ImagePromptError
from .number_list import parse_numbers

CONSTANT = "constant"
PER_STEP = "per step list"
CURVES = ("linear", "ease in", "ease out", "ease in-out")
#: What the node offers, in order; constant (the default) is today's path, bit for bit.
SCHEDULES: tuple[str, ...] = (CONSTANT, *CURVES, PER_STEP)
#: Knots of the sigma -> t table (enough that a piecewise-linear t is exact to ~1e-3 of the window).
KNOTS = 65


def curve(name: str, t: Tensor) -> Tensor:
    """The ramp shape on t in [0, 1]: linear t, ease in t^2, ease out 1-(1-t)^2, ease in-out 3t^2-2t^3."""
    if name == "linear":
        return t
    if name == "ease in":
        return t * t
    if name == "ease out":
        return 1 - (1 - t) * (1 - t)
    if name == "ease in-out":
        return t * t * (3 - 2 * t)
    raise ImagePromptError(f"ApplyIPAdapter weight_schedule: unknown curve '{name}'; choose one of {list(SCHEDULES)}.")


def interpolate(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear f(x) through (xp, fp), xp ascending; clamped at the ends. Device ops only."""
    index = torch.searchsorted(xp, x).clamp(1, xp.shape[0] - 1)
    x0, x1, f0, f1 = xp[index - 1], xp[index], fp[index - 1], fp[index]
    share = ((x - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0, 1)
    return f0 + (f1 - f0) * share


@dataclass(frozen=True, eq=False)
class WeightSchedule:
    """w(step) / reference for each q row, [chunks * batch, 1, 1], on the rows' device.

    Attributes:
        reference: the weight folded into the image K/V (largest |w| of the schedule).
        curve_name: one of `CURVES`, or None for a per-step list.
        start_weight, end_weight: the curve's ends (t = 0 and t = 1).
        sigma_knots, t_knots: the window's sigma -> t table (sigma ascending), float64 on the CPU.
        step_weights: one weight per sampler step (per-step list), stretched when the sampler has
            another number of steps.
    """

    reference: float
    curve_name: str | None = None
    start_weight: float = 1.0
    end_weight: float = 1.0
    sigma_knots: Tensor | None = None
    t_knots: Tensor | None = None
    step_weights: tuple[float, ...] = ()
    _cache: dict = field(default_factory=dict, repr=False)

    def __deepcopy__(self, memo: dict) -> WeightSchedule:
        return self  # immutable in meaning; the cache is a pure function of the fields

    def factor(self, sigmas: Tensor, options: dict, chunks: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """This step's factor per q row; computed once per step (every layer gets the same `sigmas` object)."""
        last = self._cache.get("last")
        if last is not None and last[0] is sigmas and last[1] == (chunks, device, dtype):
            return last[2]
        weights = self._weights(sigmas, options)
        value = (weights / self.reference).repeat(chunks).view(-1, 1, 1).to(device=device, dtype=dtype)
        self._cache["last"] = (sigmas, (chunks, device, dtype), value)
        return value

    def _weights(self, sigmas: Tensor, options: dict) -> Tensor:
        sigmas = sigmas.to(torch.float64)
        if self.curve_name is not None:
            assert self.sigma_knots is not None and self.t_knots is not None
            t = interpolate(sigmas, self._on(sigmas.device, "sigma", self.sigma_knots),
                            self._on(sigmas.device, "t", self.t_knots))
            return self.start_weight + (self.end_weight - self.start_weight) * curve(self.curve_name, t)
        sample_sigmas = options.get("sample_sigmas")
        if not isinstance(sample_sigmas, Tensor) or sample_sigmas.ndim != 1 or sample_sigmas.shape[0] < 2:
            raise ImagePromptError(
                "ApplyIPAdapter weight_schedule 'per step list': the sampler did not pass its sigmas "
                "(transformer_options['sample_sigmas']), so the step is unknown. Use KSampler / SamplerCustom, "
                "or a curve schedule."
            )
        steps = sample_sigmas.shape[0] - 1  # a shape: read without touching the device
        table = self._on(sigmas.device, ("steps", steps), torch.tensor(stretch(self.step_weights, steps),
                                                                       dtype=torch.float64))
        schedule = sample_sigmas[:-1].to(device=sigmas.device, dtype=torch.float64)
        step = (schedule.unsqueeze(0) - sigmas.unsqueeze(1)).abs().argmin(dim=1)  # nearest step, per row
        return table[step]

    def _on(self, device: torch.device, key: object, tensor: Tensor) -> Tensor:
        cached = self._cache.get((key, device))
        if cached is None:
            cached = self._cache[(key, device)] = tensor.to(device)
        return cached

    def release_except(self, device: torch.device) -> None:
        """Forget tables and factors held on other devices (the patch moved)."""
        self._cache.clear()


def stretch(values: Sequence[float], steps: int) -> list[float]:
    """`values` resampled to `steps` entries by linear interpolation (unchanged when the counts match)."""
    if len(values) == steps:
        return list(values)
    if len(values) == 1 or steps == 1:
        return [float(values[0])] * steps
    out = []
    for i in range(steps):
        position = i * (len(values) - 1) / (steps - 1)
        low = min(int(position), len(values) - 2)
        share = position - low
        out.append(values[low] * (1 - share) + values[low + 1] * share)
    return out


def parse_step_weights(text: str | None) -> tuple[float, ...]:
    """'1, 0.8, 0.6' -> one weight per sampler step; an empty list is refused (the schedule needs it)."""
    where = "ApplyIPAdapter step_weights"
    hint = "Give one weight per sampler step, separated by commas, e.g. '1, 0.9, 0.8, ...'."
    values = parse_numbers(text, where, hint)
    if not values:
        raise ImagePromptError(f"{where}: weight_schedule is 'per step list' but the list is empty. {hint}")
    return tuple(values)


def sigma_table(percent_to_sigma: object, start: float, end: float, knots: int = KNOTS) -> tuple[Tensor, Tensor]:
    """(sigma ascending, t) knots over start..end percent, from the model's `percent_to_sigma`.

    Percents 0 and 1 are nudged inwards: ComfyUI maps them to 'infinite' and 0 sigmas,
    which would make one table segment swallow the whole window.
    """
    edge = 1e-4
    t = torch.linspace(0.0, 1.0, knots, dtype=torch.float64)
    percents = [min(max(start + (end - start) * float(v), edge), 1 - edge) for v in t]
    sigmas = torch.tensor([float(percent_to_sigma(p)) for p in percents], dtype=torch.float64)  # type: ignore[operator]
    order = torch.argsort(sigmas)
    return sigmas[order], t[order]


def build_schedule(name: str, weight: float, end_weight: float, step_text: str | None,
                   percent_to_sigma: object, start: float, end: float) -> WeightSchedule | None:
    """The schedule the node's inputs ask for; None for 'constant' (today's path, bit for bit)."""
    if name == CONSTANT:
        return None
    if name == PER_STEP:
        values = parse_step_weights(step_text)
        reference = max((abs(v) for v in values), default=0.0)
        return WeightSchedule(reference=reference or 1.0, step_weights=values)
    if name not in CURVES:
        raise ImagePromptError(
            f"ApplyIPAdapter weight_schedule: unknown '{name}'; choose one of {list(SCHEDULES)}.")
    if not math.isfinite(end_weight):
        raise ImagePromptError(f"ApplyIPAdapter end_weight is {end_weight}; give a number between -1 and 3.")
    sigma_knots, t_knots = sigma_table(percent_to_sigma, start, end)
    reference = max(abs(weight), abs(end_weight)) or 1.0
    return WeightSchedule(reference=reference, curve_name=name, start_weight=weight, end_weight=end_weight,
                          sigma_knots=sigma_knots, t_knots=t_knots)
