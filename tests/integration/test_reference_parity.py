"""ComfyUI + this pack vs diffusers' IP-Adapter: same UNet weights, same adapter file.

For each variant the adapter file is loaded by our LoadIPAdapter node and by
diffusers (`_load_ip_adapter_weights`, from the same file on disk). Both sides get
the same CLIP features from ComfyUI's encoder (cond: the image; uncond as the
authors define it). The compared quantity is the classifier-free-guided noise
prediction at timestep 500 with cfg 3, so cond and uncond rows both count.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from support import checkpoints, diffusers_twin, unets
from support.comfy_clip import reference_features, tiny_comfy_clip_vision
from support.comfy_harness import run_node

CFG, WEIGHT, TIMESTEP = 3.0, 0.8, 500

CASES = [
    ("sd15", "ip-adapter_sd15"),
    ("sd15", "ip-adapter-plus_sd15", 2),  # two reference images: tokens side by side, one softmax
    ("sd15", "ip-adapter-plus_sd15"),
    ("sd15", "ip-adapter-full-face_sd15"),
    ("sd15", "ip-adapter_sd15_vit-G"),
    ("sdxl", "ip-adapter_sdxl"),
    ("sdxl", "ip-adapter_sdxl_vit-h"),
    ("sdxl", "ip-adapter-plus_sdxl_vit-h"),
]

def _diffusers_with_adapter(model, adapter_file, weight: float):
    attention_processor = pytest.importorskip("diffusers.models.attention_processor")
    unet = diffusers_twin.diffusers_twin(model)
    unet._load_ip_adapter_weights([checkpoints.nest(load_file(str(adapter_file)))], low_cpu_mem_usage=False)
    processors = [p for p in unet.attn_processors.values()
                  if isinstance(p, attention_processor.IPAdapterAttnProcessor2_0)]
    for processor in processors:
        processor.scale = [weight]
    return unet, len(processors)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_noise_prediction_matches_diffusers(comfy, model_dirs, tmp_path, case: tuple) -> None:
    base, variant, images = (*case, 1)[:3]
    model = unets.comfy_sd15_model(seed=11) if base == "sd15" else unets.comfy_sdxl_model(seed=11)
    adapter_file = checkpoints.save_safetensors(
        checkpoints.ip_adapter_state_dict(variant, "small", seed=4), model_dirs["ipadapter"] / f"{variant}.safetensors")
    facts = checkpoints.expected(variant)
    widths = ({"hidden": 1280, "projection_dim": facts["clip_dim"]} if facts["feature"] == "image_embeds"
              else {"hidden": facts["clip_dim"], "projection_dim": 1024})
    clip_vision = tiny_comfy_clip_vision(tmp_path, seed=2, **widths)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(images, 160, 200, 3, generator=g)

    (adapter,) = run_node("LoadIPAdapter", adapter_name=adapter_file.name)
    (prompt,) = run_node("EncodeImagePrompt", ip_adapter=adapter, clip_vision=clip_vision, image=image,
                         fit="center crop")
    (patched,) = run_node("ApplyIPAdapter", model=model, ip_adapter=adapter, image_prompt=prompt,
                          weight=WEIGHT, start_percent=0.0, end_percent=1.0)

    context_dim = 768 if base == "sd15" else 2048
    positive, negative = torch.randn(2, 1, 77, context_dim, generator=g)
    x = torch.randn(1, 4, 16, 16, generator=g)
    sigma = unets.sigma_for_timestep(model, TIMESTEP)
    pooled = torch.randn(2, 1, 1280, generator=g) if base == "sdxl" else (None, None)
    ours = unets.comfy_eps(patched, x, sigma, positive, pooled[1], negative=negative,
                           negative_pooled=pooled[0], cfg=CFG)
    plain = unets.comfy_eps(model, x, sigma, positive, pooled[1], negative=negative,
                            negative_pooled=pooled[0], cfg=CFG)

    unet, processor_count = _diffusers_with_adapter(model, adapter_file, WEIGHT)
    assert processor_count == (16 if base == "sd15" else 70)
    cond, uncond = reference_features(clip_vision, image, facts["feature"])
    added = {"image_embeds": [torch.stack([uncond, cond])]}  # [rows (uncond, cond), images, ...]
    if base == "sdxl":
        added.update(diffusers_twin.sdxl_added_cond_kwargs(torch.cat([pooled[0], pooled[1]]), 128, 128))
    eps = diffusers_twin.diffusers_eps(unet, x.repeat(2, 1, 1, 1), TIMESTEP, torch.cat([negative, positive]), added,
                              sigma=sigma)
    reference = eps[0:1] + CFG * (eps[1:2] - eps[0:1])

    difference = (ours - reference).abs().max().item()
    print(f"\nparity {base} {variant} x{images}: max abs {difference:.2e}, image effect {(ours - plain).abs().max():.3f}")
    assert difference < 1e-4
    assert (ours - plain).abs().max() > 1e-2  # the image prompt really acts
