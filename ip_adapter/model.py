"""The IP-Adapter module: one projection model plus per-layer image K/V projections.

Attribute names equal checkpoint keys (`image_proj.*`, `ip_adapter.N.to_k_ip`),
so a checkpoint loads with `strict=True` and no key map; anything the module
does not have is an error with the key's name (checked before torch would).

Loading does only what it must: the module is built on the meta device (no
default initialisation that the checkpoint would overwrite) and the file's
tensors become its parameters as they are (`assign=True`: no copy; from a
`.safetensors` file they stay memory-mapped until ComfyUI moves them to the
device). Finiteness is checked once, at first use, on the device the weights
are then on (`check_finite`): on the CPU that pass reads every page of the file,
which loading itself no longer does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TypeVar

import torch
from torch import Tensor, nn

from . import uninit
from .errors import AdapterFormatError
from .finite import non_finite
from .projection import ImageProjModel, MLPProjModel, Resampler
from .spec import AdapterSpec, ProjectionKind
from .state_dict import detect_spec, read_file, split

M = TypeVar("M", bound=nn.Module)

#: Weight dtypes projected in float32 when on the CPU (see `IPAdapterModel._cpu_projection`).
_SLOW_ON_CPU = (torch.float16, torch.bfloat16)

_PROJECTIONS = {
    ProjectionKind.LINEAR: ImageProjModel,
    ProjectionKind.MLP: MLPProjModel,
    ProjectionKind.RESAMPLER: Resampler,
}


def load_checked(model: M, sd: Mapping[str, Tensor], source: str) -> M:
    """Load `sd` into a meta-built `model` strictly, after naming wrong shapes and non-finite values."""
    expected = model.state_dict()
    wrong = [f"{key} {tuple(sd[key].shape)} (expected {tuple(t.shape)})"
             for key, t in expected.items() if key in sd and sd[key].shape != t.shape]
    if wrong:
        raise AdapterFormatError(f"'{source}' has tensors of unexpected shape: {'; '.join(wrong[:4])}.")
    bad = [key for key, t in sd.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise AdapterFormatError(f"'{source}' has NaN or infinite values in {', '.join(bad[:4])}; download it again.")
    model.load_state_dict(dict(sd), strict=True, assign=True)
    return model.eval().requires_grad_(False)


def run_projection(projection: nn.Module, features: Tensor) -> Tensor:
    """Encoder features -> tokens, float32, computed in the weights' dtype on their device (as the reference).

    The weights' place is read from a parameter, not `.device`/`.dtype` properties:
    ComfyUI's ModelPatcher sets attributes with those names on the modules it manages.
    """
    weights = next(projection.parameters())
    return projection(features.to(device=weights.device, dtype=weights.dtype)).float()


class ImageKV(nn.Module):
    """`K_img = c W'_k`, `V_img = c W'_v` for one cross-attention layer (no bias)."""

    def __init__(self, cross_attention_dim: int, width: int) -> None:
        super().__init__()
        self.to_k_ip = uninit.Linear(cross_attention_dim, width, bias=False)
        self.to_v_ip = uninit.Linear(cross_attention_dim, width, bias=False)


class IPAdapterModel(nn.Module):
    """Projection model + the K/V projections of every cross-attention layer."""

    def __init__(self, spec: AdapterSpec, image_proj: nn.Module, source: str = "checkpoint") -> None:
        super().__init__()
        self.spec = spec
        self.source = source  # the file name, for errors found after loading
        self._finite_checked = False
        self._float32_copies: dict[str, nn.Module] = {}  # see `_cpu_projection`
        self.image_proj = image_proj
        self.ip_adapter = nn.ModuleDict(
            {str(index): ImageKV(spec.cross_attention_dim, width)
             for index, width in zip(spec.layer_indices, spec.layer_widths)}
        )

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Tensor], source: str = "checkpoint") -> IPAdapterModel:
        """Build the module the keys describe and load it strictly, adopting the tensors without a copy.

        The tensors must not be modified afterwards by the caller: they become the parameters.
        """
        spec = detect_spec(sd, source)
        image_proj_sd, _ = split(sd)
        with torch.device("meta"):
            model = cls(spec, _PROJECTIONS[spec.projection].from_shapes(image_proj_sd), source)
        _adopt(model, sd, source)
        return model.eval()

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> IPAdapterModel:
        """Read, detect and load a checkpoint; errors name the file."""
        return cls.from_state_dict(read_file(path), source=os.path.basename(os.fspath(path)))

    def _weights(self) -> Tensor:
        """Any parameter: where and in which dtype the weights are now.

        (Not `.device`/`.dtype` properties: ComfyUI's ModelPatcher sets attributes
        with those names on the modules it manages.)
        """
        return next(self.parameters())

    def check_finite(self) -> None:
        """Refuse NaN or infinite weights, naming the file; the first call checks, later calls return at once.

        Called by `project` and `image_kv`, the two ways the weights are used, so
        the check runs where the weights are when first used (on the GPU when
        ComfyUI has loaded them there) and a damaged file never yields an image.
        """
        if self._finite_checked:
            return
        bad = non_finite(self.state_dict(keep_vars=True).items())
        if bad:
            raise AdapterFormatError(
                f"'{self.source}' has NaN or infinite values in {', '.join(bad[:4])}"
                f"{f' and {len(bad) - 4} more' if len(bad) > 4 else ''}; the file is damaged: download it again."
            )
        self._finite_checked = True

    @torch.no_grad()
    def project(self, features: Tensor) -> Tensor:
        """CLIP features of `spec.feature` -> tokens [B, T, cross_attention_dim], float32.

        Runs in the weights' dtype on the weights' device, as the reference does,
        except for half-precision weights on the CPU (`_cpu_projection`).
        """
        self.check_finite()
        weights = self._weights()
        projection = self.image_proj
        if weights.device.type == "cpu" and weights.dtype in _SLOW_ON_CPU:
            projection, weights = self._cpu_projection(), weights.float()
        out = projection(features.to(device=weights.device, dtype=weights.dtype))
        return out.float()

    def _cpu_projection(self) -> nn.Module:
        """A float32 copy of the projection model, made on first use and kept with this module.

        CPUs without native half-precision matrix units run fp16/bf16 matmuls 2-10x
        slower than fp32 (one SDXL plus image on this project's CI machine: 4.3 s
        fp16, 0.96-3.6 s bf16, 0.46 s fp32); ComfyUI computes in fp32 on the CPU too.
        Converting on every call would cost about as much as the projection itself, so
        the copy is kept (in a plain dict: not a submodule, so ComfyUI never moves it
        and it is not in the state dict). The weights never change after loading.
        """
        projection = self._float32_copies.get("image_proj")
        if projection is None:
            weights = {key: tensor.float() for key, tensor in self.image_proj.state_dict().items()}
            with torch.device("meta"):
                projection = _PROJECTIONS[self.spec.projection].from_shapes(weights)
            projection.load_state_dict(weights, strict=True, assign=True)
            projection = projection.eval().requires_grad_(False)
            self._float32_copies["image_proj"] = projection
        return projection

    @torch.no_grad()
    def image_kv(self, tokens: Tensor, device: torch.device, dtype: torch.dtype) -> dict[int, tuple[Tensor, Tensor]]:
        """K and V of `tokens` [n, T, C] for every layer, computed in float32, stored in `dtype`."""
        self.check_finite()
        tokens = tokens.to(device=device, dtype=torch.float32)
        result = {}
        for index, layer in self.ip_adapter.items():
            k = nn.functional.linear(tokens, layer.to_k_ip.weight.to(device=device, dtype=torch.float32))
            v = nn.functional.linear(tokens, layer.to_v_ip.weight.to(device=device, dtype=torch.float32))
            result[int(index)] = (k.to(dtype), v.to(dtype))
        return result


def _adopt(model: nn.Module, sd: Mapping[str, Tensor], source: str) -> None:
    """Make each tensor of `sd` the parameter of the same name, as it is (no copy), frozen.

    What `load_state_dict(strict=True, assign=True)` does, without its per-module
    hook machinery (a third of a load's time for SDXL's 210 modules): keys must match
    exactly (`detect_spec` has named unknown and missing ones already) and shapes too.
    """
    params = dict(model.named_parameters())
    if set(params) != set(sd):
        missing, unexpected = sorted(set(params) - set(sd)), sorted(set(sd) - set(params))
        raise AdapterFormatError(f"'{source}' does not match the module: missing {missing[:4]}, unexpected "
                                 f"{unexpected[:4]}.")
    wrong = [f"{key} {tuple(sd[key].shape)} (expected {tuple(p.shape)})"
             for key, p in params.items() if sd[key].shape != p.shape]
    if wrong:
        raise AdapterFormatError(f"'{source}' has tensors of unexpected shape: {'; '.join(wrong[:4])}.")
    modules = dict(model.named_modules())
    for key in params:
        owner, _, name = key.rpartition(".")
        setattr(modules[owner], name, nn.Parameter(sd[key], requires_grad=False))
