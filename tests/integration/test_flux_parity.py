"""ComfyUI's Flux + this pack vs diffusers' Flux IP-Adapter: same transformer weights, same XLabs file.

The tiny Flux is detected and built by ComfyUI (`support.flux_models`); diffusers'
`FluxTransformer2DModel` gets the same weights, and diffusers' own
`FluxPipeline.load_ip_adapter` reads the very XLabs-layout `.safetensors` that our
LoadIPAdapter reads. Both sides get the same CLIP image_embeds from ComfyUI's
encoder. The compared quantity is the transformer's prediction (velocity) at one
sigma: with cfg 1 (Flux dev's guidance-distilled use: cond only), and with true
CFG 3 where the unconditional rows take the negative image's tokens (default: a
black image, as diffusers' and XLabs' pipelines do).
"""

from __future__ import annotations

import pytest
import torch
from support import flux_models, unets
from support.comfy_clip import tiny_comfy_clip_vision
from support.comfy_harness import run_node

WEIGHT, SIGMA, GUIDANCE = 0.8, 0.7, 3.5

CASES = [  # (tokens, cfg, negative image)
    (4, 1.0, False),
    (16, 1.0, False),
    (4, 3.0, False),
    (4, 3.0, True),
]


@pytest.fixture(scope="module")
def flux(comfy):
    return flux_models.comfy_flux_model(seed=7)


def _diffusers_pipeline(model, adapter_file, weight: float):
    diffusers = pytest.importorskip("diffusers")
    twin = flux_models.diffusers_twin(model)
    pipe = diffusers.FluxPipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
                                  tokenizer_2=None, transformer=twin)
    pipe.load_ip_adapter(str(adapter_file.parent), weight_name=adapter_file.name,
                         image_encoder_pretrained_model_name_or_path=None)
    pipe.set_ip_adapter_scale(weight)
    processors = [p for p in twin.attn_processors.values() if type(p).__name__ == "FluxIPAdapterAttnProcessor"]
    return twin, len(processors)


def _embeds(clip_vision, image: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return clip_vision.encode_image(image, crop=True)["image_embeds"].float()


def test_tiny_flux_twin_matches_comfyui_without_adapter(flux) -> None:
    twin = flux_models.diffusers_twin(flux)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 8, 12, generator=g)
    context, pooled = torch.randn(1, 5, flux_models.CONTEXT, generator=g), torch.randn(1, flux_models.VEC, generator=g)
    ours = unets.comfy_eps(flux, x, SIGMA, context, pooled, cond_extra={"guidance": GUIDANCE})
    reference = flux_models.diffusers_velocity(twin, x, SIGMA, context, pooled, GUIDANCE)
    assert (ours - reference).abs().max() < 1e-4


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}tokens-cfg{c[1]:g}" + ("-negative" if c[2] else ""))
def test_prediction_matches_diffusers_flux_ip_adapter(comfy, flux, model_dirs, tmp_path, case) -> None:
    tokens, cfg, with_negative = case
    adapter_file = flux_models.save(flux_models.xlabs_state_dict(tokens, seed=3),
                                    model_dirs["ipadapter"] / f"flux-ip-adapter-{tokens}.safetensors")
    clip_vision = tiny_comfy_clip_vision(tmp_path, hidden=64, projection_dim=768, seed=2)
    g = torch.Generator().manual_seed(0)
    image, negative_image = torch.rand(2, 1, 160, 200, 3, generator=g)

    (adapter,) = run_node("LoadIPAdapter", adapter_name=adapter_file.name)
    encode_inputs = {"negative_image": negative_image} if with_negative else {}
    (prompt,) = run_node("EncodeImagePrompt", ip_adapter=adapter, clip_vision=clip_vision, image=image,
                         fit="center crop", **encode_inputs)
    (patched,) = run_node("ApplyIPAdapter", model=flux, ip_adapter=adapter, image_prompt=prompt, weight=WEIGHT,
                          start_percent=0.0, end_percent=1.0)

    x = torch.randn(1, 16, 8, 12, generator=g)
    positive, negative = torch.randn(2, 1, 5, flux_models.CONTEXT, generator=g)
    pooled = torch.randn(2, 1, flux_models.VEC, generator=g)
    extra = {"guidance": GUIDANCE}
    ours = unets.comfy_eps(patched, x, SIGMA, positive, pooled[1], negative=negative, negative_pooled=pooled[0],
                           cfg=cfg, cond_extra=extra)
    plain = unets.comfy_eps(flux, x, SIGMA, positive, pooled[1], negative=negative, negative_pooled=pooled[0],
                            cfg=cfg, cond_extra=extra)

    twin, processors = _diffusers_pipeline(flux, adapter_file, WEIGHT)
    assert processors == 19
    cond = _embeds(clip_vision, image)
    reference = flux_models.diffusers_velocity(twin, x, SIGMA, positive, pooled[1], GUIDANCE, cond[:, None])
    if cfg != 1.0:
        uncond = _embeds(clip_vision, negative_image if with_negative else torch.zeros(1, 224, 224, 3))
        negative_v = flux_models.diffusers_velocity(twin, x, SIGMA, negative, pooled[0], GUIDANCE, uncond[:, None])
        reference = negative_v + cfg * (reference - negative_v)

    difference = (ours - reference).abs().max().item()
    print(f"\nflux parity {tokens} tokens cfg {cfg:g} negative={with_negative}: max abs {difference:.2e}, "
          f"image effect {(ours - plain).abs().max():.3f}")
    assert difference < 1e-4
    assert (ours - plain).abs().max() > 1e-2  # the image prompt really acts
