"""Our projection models against diffusers' (the reference implementation), same weights."""

from __future__ import annotations

import pytest
import torch
from ipadapter_pack.ip_adapter.model import IPAdapterModel
from ipadapter_pack.ip_adapter.state_dict import split
from support import checkpoints

diffusers_unet_loader = pytest.importorskip("diffusers.loaders.unet")

CASES = [
    ("ip-adapter_sd15", "full"),
    ("ip-adapter_sd15_vit-G", "full"),
    ("ip-adapter_sdxl", "full"),
    ("ip-adapter-plus_sd15", "full"),
    ("ip-adapter-plus_sdxl_vit-h", "small"),
    ("ip-adapter-full-face_sd15", "full"),
]


def _reference_projection(image_proj_sd: dict[str, torch.Tensor]) -> torch.nn.Module:
    convert = diffusers_unet_loader.UNet2DConditionLoadersMixin._convert_ip_adapter_image_proj_to_diffusers
    return convert(None, dict(image_proj_sd), low_cpu_mem_usage=False).eval()


@pytest.mark.parametrize("variant,size", CASES)
def test_projection_matches_diffusers(variant: str, size: str) -> None:
    sd = checkpoints.ip_adapter_state_dict(variant, size, seed=7)
    ours = IPAdapterModel.from_state_dict(sd, variant)
    reference = _reference_projection(split(sd)[0])
    spec = ours.spec
    generator = torch.Generator().manual_seed(1)
    if spec.feature.value == "image_embeds":
        features = torch.randn(3, spec.clip_dim, generator=generator)
    else:
        features = torch.randn(3, 257, spec.clip_dim, generator=generator)
    with torch.no_grad():
        expected = reference(features)
    got = ours.project(features)
    assert got.shape == (3, spec.tokens, spec.cross_attention_dim)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert expected.abs().mean() > 0.1  # the comparison is not between two near-zero tensors


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_project_close_to_fp32(dtype: torch.dtype) -> None:
    sd = checkpoints.ip_adapter_state_dict("ip-adapter-plus_sd15", "small", seed=2)
    features = torch.randn(1, 257, 1280, generator=torch.Generator().manual_seed(0))
    reference = IPAdapterModel.from_state_dict(sd, "plus").project(features)
    model = IPAdapterModel.from_state_dict({k: v.to(dtype) for k, v in sd.items()}, "plus")
    out = model.project(features)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    tolerance = 0.05 if dtype is torch.float16 else 0.2  # LayerNorm output is O(1)
    assert (out - reference).abs().max() < tolerance
