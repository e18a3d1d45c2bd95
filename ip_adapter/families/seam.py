"""The seam between the nodes and a model family's injection: one small interface.

A family (UNet, Flux, and an MMDiT family for SD3.5 next) is a `FamilyInjection`
object in its own module under `ip_adapter.families`. It answers three things,
all without importing ComfyUI:

* `points(spec)`: where each checkpoint layer goes, as `HookPoint`s: which of
  ComfyUI's public hooks (`"attn2"`: `set_model_attn2_replace`; `"dit"`:
  `patches_replace["dit"]` block replace) and under which key.
* `make_patch(branch, layer, previous, backends)`: the callable registered at a
  point. `previous` is whatever held that key before (another adapter, another
  pack); the patch wraps it, never drops it.
* `describe_model(found)`: a human name for a model's points ("SD1.5", "Flux"),
  for the error when an adapter of one family meets a model of another.
* `wrappers(branch)`: ComfyUI wrappers the patches need (Flux: the latent shape
  for masks, which its blocks are not told); usually none.

Detection and loading are the family's too (`detect` / `build` in its format
module, dispatched by `ip_adapter.loading`). The shared math (rows, gate, mask,
K/V cache) is `ip_adapter.patch.ImageBranch`; the nodes see none of this, they
call `nodes.comfy_bridge.patched_clone`, which asks `injection_for(spec)` for the
points and patches and registers them on a clone. A family that needs something
per sampling step (SD3.5's timestep-conditioned tokens) computes it inside its
patch from the `transformer_options` ComfyUI passes, keyed on the step's sigmas
like `ImageBranch.gate`, so no new hook kind is needed for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from ..attention import AttentionFn
from ..errors import ImagePromptError
from ..patch import ImageBranch
from ..spec import AdapterSpec, ModelFamily


class HookPoint(NamedTuple):
    """One place in ComfyUI's model where a patch is registered.

    `hook`: the `patches_replace` kind ("attn2" or "dit"). `key`: ComfyUI's key
    under it, e.g. ("input", 4, 0) or ("double_block", 3). `lookup`: the keys
    ComfyUI consults for this point, most specific first (a patch another pack
    registered under a shorter key is the one that would run, so composition
    looks there too).
    """

    hook: str
    key: tuple
    lookup: tuple[tuple, ...]


@dataclass(frozen=True)
class Backends:
    """The attention functions the host uses (`attention`) and the image term uses (`image`)."""

    attention: AttentionFn
    image: AttentionFn | None = None


class FamilyInjection(Protocol):
    family: ModelFamily

    def points(self, spec: AdapterSpec) -> dict[int, HookPoint]:
        """Checkpoint layer -> where its patch goes, for every layer of `spec`."""
        ...

    def make_patch(self, branch: ImageBranch, layer: int, previous: Any, backends: Backends) -> Any:
        """The callable for `layer`, wrapping `previous` (None when the point was free)."""
        ...

    def describe_model(self, found: Mapping[HookPoint, int]) -> str | None:
        """A name for a model whose available points are `found`, or None if it is not of this family."""
        ...

    def wrappers(self, branch: ImageBranch) -> tuple[tuple[str, Callable[..., Any]], ...]:
        """(ComfyUI wrapper type, function) pairs the patches need besides the replaces (often none)."""
        ...


def make_patches(injection: FamilyInjection, branch: ImageBranch, existing: Callable[[HookPoint], Any],
                 backends: Backends) -> list[tuple[HookPoint, Any]]:
    """One patch per point whose layer carries a term; layers at multiplier 0 keep what they had."""
    patches = []
    for layer, point in injection.points(branch.adapter.spec).items():
        if branch.layer_weight(layer) == 0.0:
            continue
        patches.append((point, injection.make_patch(branch, layer, existing(point), backends)))
    return patches


def check_points(injection: FamilyInjection, spec: AdapterSpec, found: Mapping[HookPoint, int], adapter_name: str,
                 model_name: str, where: str) -> None:
    """Refuse an adapter whose points or widths the model does not have, naming both sides.

    `found` maps every point the model offers (any family) to its attention width;
    `model_name` is what the model looks like (`describe` over all families).
    """
    wanted = injection.points(spec)
    missing = [point for point in wanted.values() if point not in found]
    hook = next(iter(wanted.values())).hook
    offered = sum(1 for point in found if point.hook == hook)
    if missing or offered != len(wanted):
        raise ImagePromptError(
            f"{where}: '{adapter_name}' is a {spec.base.value} adapter ({len(wanted)} {_what(spec)} at the "
            f"{spec.base.value} positions), but the model has {offered} {_what(spec)} (looks like {model_name}). "
            f"Load a {spec.base.value} checkpoint, or pick an adapter made for this model."
        )
    for (layer, point), width in zip(wanted.items(), spec.layer_widths):
        if found[point] != width:
            raise ImagePromptError(
                f"{where}: '{adapter_name}' layer {layer} is {width} wide but the model's {point.key} attention "
                f"is {found[point]} wide; this adapter is for another model."
            )


def _what(spec: AdapterSpec) -> str:
    return "double blocks" if spec.family is ModelFamily.FLUX else "cross-attention layers"
