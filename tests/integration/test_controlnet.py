"""ControlNet and IP-Adapter in one graph: ComfyUI's own ControlNetLoader + ControlNetApplyAdvanced,
our ApplyIPAdapter, and a real KSampler. Each acts; removing one gives exactly the other alone."""

from __future__ import annotations

import math

import torch
from support import checkpoints, controlnets, unets
from support.comfy_clip import tiny_comfy_clip_vision
from support.comfy_harness import run_node

WIDTH = 64  # ComfyUI loads a reduced-width SD1.5 ControlNet only at multiples of 64 channels


def _adapter_for_width(seed: int) -> dict[str, torch.Tensor]:
    """The small base SD1.5 adapter with K/V widths doubled to fit a UNet of 64 channels (32 in 'small')."""
    sd = checkpoints.ip_adapter_state_dict("ip-adapter_sd15", "small", seed=seed)
    g = torch.Generator().manual_seed(seed)
    for key, value in list(sd.items()):
        if key.endswith(("to_k_ip.weight", "to_v_ip.weight")):
            rows, cols = value.shape
            sd[key] = torch.randn(rows * WIDTH // 32, cols, generator=g) / math.sqrt(cols)
    return sd


def test_controlnet_and_ip_adapter_act_together_and_apart(comfy, model_dirs, tmp_path) -> None:
    model = unets.comfy_sd15_model(seed=6, model_channels=WIDTH)
    cn_file = controlnets.save_sd15_controlnet(model_dirs["controlnet"] / "control_v11p_sd15_tiny.safetensors",
                                               model_channels=WIDTH, seed=7)
    (control_net,) = run_node("ControlNetLoader", control_net_name=cn_file.name)
    ip_file = checkpoints.save_safetensors(_adapter_for_width(8), model_dirs["ipadapter"] / "wide.safetensors")
    (adapter,) = run_node("LoadIPAdapter", adapter_name=ip_file.name)
    (prompt,) = run_node("EncodeImagePrompt", ip_adapter=adapter, clip_vision=tiny_comfy_clip_vision(tmp_path),
                         image=torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(1)),
                         fit="center crop")

    g = torch.Generator().manual_seed(2)
    positive, negative = ([[torch.randn(1, 77, 768, generator=g), {}]] for _ in range(2))
    hint = torch.rand(1, 128, 128, 3, generator=g)  # latent 16x16 -> image 128x128

    def controlled():
        return run_node("ControlNetApplyAdvanced", positive=positive, negative=negative, control_net=control_net,
                        image=hint, strength=1.0, start_percent=0.0, end_percent=1.0)

    def with_image_prompt():
        return run_node("ApplyIPAdapter", model=model, ip_adapter=adapter, image_prompt=prompt, weight=1.0,
                        start_percent=0.0, end_percent=1.0)[0]

    def sample(unet, pos, neg) -> torch.Tensor:
        (out,) = run_node("KSampler", model=unet, seed=5, steps=3, cfg=4.0, sampler_name="euler", scheduler="normal",
                          positive=pos, negative=neg, latent_image={"samples": torch.zeros(1, 4, 16, 16)},
                          denoise=1.0)
        return out["samples"]

    plain = sample(model, positive, negative)
    control_alone = sample(model, *controlled())
    image_alone = sample(with_image_prompt(), positive, negative)
    both = sample(with_image_prompt(), *controlled())
    assert torch.isfinite(both).all()
    gaps = {"controlnet acts": (control_alone, plain), "ip-adapter acts": (image_alone, plain),
            "ip-adapter acts beside controlnet": (both, control_alone),
            "controlnet acts beside ip-adapter": (both, image_alone)}
    for what, (a, b) in gaps.items():
        assert (a - b).abs().max() > 1e-2, what
    # Remove one from the graph: the other alone comes back exactly (nothing leaked between runs).
    assert torch.equal(sample(model, *controlled()), control_alone)
    assert torch.equal(sample(with_image_prompt(), positive, negative), image_alone)
    assert torch.equal(sample(model, positive, negative), plain)
