"""Another pack's attn2 patch in the same slots is wrapped by ours, not replaced."""

from __future__ import annotations

import torch
from support import checkpoints, unets
from support.comfy_clip import tiny_comfy_clip_vision
from support.comfy_harness import run_node


class StandIn:
    """A foreign attn2 replace (e.g. another pack's): plain attention, scaled, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, q, k, v, extra_options):
        from comfy.ldm.modules import attention

        self.calls += 1
        return 0.9 * attention.optimized_attention(q, k, v, extra_options["n_heads"])


def test_foreign_patch_keeps_running_under_the_adapter(comfy, model_dirs, tmp_path) -> None:
    model = unets.comfy_sd15_model(seed=2)
    stand_in = StandIn()
    foreign = model.clone()
    for block, number in unets.SD15_ATTN2_SLOTS:  # registered with ComfyUI's short keys
        foreign.set_model_attn2_replace(stand_in, block, number)
    path = checkpoints.save_safetensors(checkpoints.ip_adapter_state_dict("ip-adapter_sd15"),
                                        model_dirs["ipadapter"] / "compose.safetensors")
    (adapter,) = run_node("LoadIPAdapter", adapter_name=path.name)
    clip_vision = tiny_comfy_clip_vision(tmp_path)
    (prompt,) = run_node("EncodeImagePrompt", ip_adapter=adapter, clip_vision=clip_vision,
                         image=torch.rand(1, 64, 64, 3), fit="center crop")
    apply = {"ip_adapter": adapter, "image_prompt": prompt, "weight": 1.0, "start_percent": 0.0, "end_percent": 1.0}
    (both,) = run_node("ApplyIPAdapter", model=foreign, **apply)
    (adapter_only,) = run_node("ApplyIPAdapter", model=model, **apply)

    g = torch.Generator().manual_seed(0)
    context, x = torch.randn(1, 77, 768, generator=g), torch.randn(1, 4, 16, 16, generator=g)
    sigma = unets.sigma_for_timestep(model, 500)
    eps = {name: unets.comfy_eps(m, x, sigma, context) for name, m in
           (("plain", model), ("foreign", foreign), ("adapter", adapter_only), ("both", both))}
    attn2 = both.model_options["transformer_options"]["patches_replace"]["attn2"]
    inner = attn2[("middle", 0)]  # clone() deep-copied the foreign object; ours wraps that copy
    assert isinstance(inner, StandIn) and attn2[("middle", 0, 0)].previous is inner
    inner.calls = 0
    unets.comfy_eps(both, x, sigma, context)
    assert inner.calls == 16  # the foreign patch still runs in every slot
    for other in ("plain", "foreign", "adapter"):
        assert (eps["both"] - eps[other]).abs().max() > 1e-3, other
    assert foreign.model_options["transformer_options"]["patches_replace"]["attn2"].get(("middle", 0, 0)) is None
