"""EncodeImagePrompt gives the same image prompt whether the ViT-H file is in HF or OpenCLIP layout.

Users have the ViT-H/14 image encoder in two layouts: the HF transformers file
(`image_encoder/model.safetensors`, usually renamed `CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors`)
and OpenCLIP's (`visual.*`, as in `open_clip_pytorch_model.bin`). ComfyUI's own loader,
`comfy.clip_vision.load`, converts the second to the first (q/k/v split out of `in_proj`,
`proj` transposed). Both files here hold the same random weights at the real ViT-H size
(1.26 GB each in fp16, written once per session in a few seconds).

Precision: ComfyUI stores CLIP vision weights in the text-encoder dtype, fp16 unless it runs
with `--fp32-text-enc` (set COMFYUI_TEST_ARGS="--cpu --fp32-text-enc" for that), and
computes in fp32 (`comfy.ops.manual_cast` upcasts each weight, and the pixels are fp32). So
this test compares the two loads with each other, not with an fp32 reference: both load
the same fp16 weights, so the encoder computes in fp32 on identical numbers and the image
prompts must agree to 1e-4 (in practice exactly). A conversion bug (a swapped q/k, an
untransposed projection) moves them by O(1).
"""

from __future__ import annotations

import pytest
import torch
from support import checkpoints
from support.clip_vision_files import (
    write_clip_vision_openclip_vit_h,
    write_clip_vision_vit_h,
)
from support.comfy_harness import run_node

pytestmark = pytest.mark.slow

TOLERANCE = 1e-4


@pytest.fixture(scope="session")
def vit_h_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vit_h_layouts")
    return {"hf": write_clip_vision_vit_h(folder / "vit_h_hf.safetensors", seed=3),
            "openclip": write_clip_vision_openclip_vit_h(folder / "vit_h_openclip.safetensors", seed=3)}


@pytest.fixture(scope="module")
def encoders(comfy, vit_h_files):
    import comfy.clip_vision

    loaded = {layout: comfy.clip_vision.load(str(path)) for layout, path in vit_h_files.items()}
    assert all(v is not None for v in loaded.values()), "ComfyUI did not recognise a ViT-H file"
    return loaded


def test_both_layouts_load_to_the_same_weights(encoders) -> None:
    hf, openclip = encoders["hf"].model.state_dict(), encoders["openclip"].model.state_dict()
    assert set(hf) == set(openclip)
    assert all(torch.equal(hf[k], openclip[k]) for k in hf)
    storage = encoders["hf"].dtype  # fp16 by default, fp32 with --fp32-text-enc
    assert encoders["openclip"].dtype == storage
    assert hf["vision_model.encoder.layers.0.self_attn.q_proj.weight"].dtype == storage


@pytest.mark.parametrize("variant", ["ip-adapter_sd15", "ip-adapter-plus_sd15"])
def test_encode_image_prompt_is_layout_independent(comfy, model_dirs, encoders, variant: str) -> None:
    """image_embeds (base) and penultimate hidden states + zero-pixel uncond (plus)."""
    sd = checkpoints.ip_adapter_state_dict(variant, "small", seed=1)
    path = checkpoints.save_safetensors(sd, model_dirs["ipadapter"] / f"{variant}.safetensors")
    (adapter,) = run_node("LoadIPAdapter", adapter_name=path.name)
    image = torch.rand(1, 256, 320, 3, generator=torch.Generator().manual_seed(4))
    prompts = {}
    for layout, clip_vision in encoders.items():
        (prompts[layout],) = run_node("EncodeImagePrompt", ip_adapter=adapter, clip_vision=clip_vision,
                                      image=image, fit="center crop")
    hf, openclip = prompts["hf"], prompts["openclip"]
    assert hf.cond.shape == openclip.cond.shape and torch.isfinite(hf.cond).all()
    assert hf.cond.abs().max() > 0.1  # a real signal, not a degenerate zero
    assert (hf.cond - openclip.cond).abs().max().item() <= TOLERANCE
    assert (hf.uncond - openclip.uncond).abs().max().item() <= TOLERANCE
