"""SD3.5 (InstantX IP-Adapter) through the three nodes vs diffusers' reference, on ComfyUI's own MMDiT.

Both sides get the same SigLIP features (ComfyUI's encoding of the image) and the same
adapter file; diffusers loads it with `SD3Transformer2DLoadersMixin._load_ip_adapter_weights`
and runs `SD3IPAdapterJointAttnProcessor2_0` with `IPAdapterTimeImageProjection`. Compared:
the classifier-free-guided velocity at sigma 0.6 (timestep 600), cfg 3, cond and uncond rows.
"""

from __future__ import annotations

import pytest
import torch
from sd35_case import DEPTH, build


@pytest.fixture
def case(comfy, model_dirs, tmp_path):
    return build(model_dirs, tmp_path)


def _check(ours: torch.Tensor, reference: torch.Tensor, plain: torch.Tensor, label: str) -> None:
    difference = (ours - reference).abs().max().item()
    print(f"\nSD3.5 parity {label}: max abs {difference:.2e}, image effect {(ours - plain).abs().max():.3f}")
    assert difference < 1e-4
    assert (ours - plain).abs().max() > 1e-2  # the image prompt really acts


def test_prediction_matches_diffusers(case) -> None:
    prompt = case.encode()
    assert prompt.cond.shape == (1, 729, case.adapter.model.shape.clip_dim)
    assert not prompt.uncond.any()  # zeros, as diffusers' SD3 pipeline
    ours = case.predict(case.apply(prompt, weight=0.7))
    reference = case.reference(prompt.cond, prompt.uncond, [0.7] * DEPTH)
    _check(ours, reference, case.predict(case.model), "weight 0.7")


def test_negative_image_and_block_weights_match_diffusers(case) -> None:
    negative = torch.rand(1, 180, 180, 3, generator=torch.Generator().manual_seed(5))
    prompt = case.encode(negative_image=negative)
    assert prompt.uncond.abs().max() > 0
    ours = case.predict(case.apply(prompt, weight=0.9, layer_weights="1, 0, 0.5"))
    reference = case.reference(prompt.cond, prompt.uncond, [0.9, 0.0, 0.45])
    _check(ours, reference, case.predict(case.model), "negative image, layer_weights 1,0,0.5")


def test_saved_prompt_applies_identically(case, comfy) -> None:
    prompt = case.encode()
    (_, ui) = (None, None)
    from support.comfy_harness import run_node

    _, ui = run_node("SaveImagePrompt", return_ui=True, image_prompt=prompt, filename_prefix="sd35/test")
    saved = ui["image_prompts"][0]
    (loaded,) = run_node("LoadImagePrompt", prompt_file=f"{saved['subfolder']}/{saved['filename']} [output]")
    assert torch.equal(loaded.cond, prompt.cond) and loaded.shape == prompt.shape
    assert torch.equal(case.predict(case.apply(loaded)), case.predict(case.apply(prompt)))
