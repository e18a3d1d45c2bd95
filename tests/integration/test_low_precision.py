"""fp16 and bf16 UNets in real ComfyUI (CPU): the patch computes in the UNet's dtype and stays close to fp32.

Same random weights at three dtypes (drawn in fp32, then cast). "Close" is judged against the
UNet's own rounding: the adapter's contribution (patched minus plain noise prediction) in
fp16/bf16 is compared with the fp32 one, relative to its size.
"""

from __future__ import annotations

import pytest
import torch
from support import checkpoints, unets
from support.comfy_clip import tiny_comfy_clip_vision
from support.comfy_harness import run_node

# Relative error of the adapter's contribution, max |low - fp32| / max |fp32| over the output.
# Observed on CPU (torch 2.14, ComfyUI --cpu attention): fp16 4.7e-3, bf16 3.5e-2.
TOLERANCE = {torch.float16: 2e-2, torch.bfloat16: 1e-1}


@pytest.fixture(scope="module")
def adapter_and_prompt(comfy, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lowp")
    clip_vision = tiny_comfy_clip_vision(folder, hidden=64, projection_dim=1024, seed=1)
    comfy.folder_paths.add_model_folder_path("ipadapter", str(folder), is_default=True)
    path = checkpoints.save_safetensors(checkpoints.ip_adapter_state_dict("ip-adapter_sd15", "small", seed=6),
                                        folder / "lowp.safetensors")
    (adapter,) = run_node("LoadIPAdapter", adapter_name=path.name)
    (prompt,) = run_node("EncodeImagePrompt", ip_adapter=adapter, clip_vision=clip_vision,
                         image=torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(2)), fit="center crop")
    yield adapter, prompt
    comfy.folder_paths.folder_names_and_paths["ipadapter"][0].remove(str(folder))


def _eps(model, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(9)
    positive, negative = torch.randn(2, 1, 77, 768, generator=g)
    x = torch.randn(1, 4, 32, 32, generator=g)  # 32: no 2x2 level, so only the image term has 4 keys
    return unets.comfy_eps(model, x.to(dtype), unets.sigma_for_timestep(model, 500), positive.to(dtype), None,
                           negative=negative.to(dtype), cfg=3.0).float()


def _run(dtype: torch.dtype, adapter, prompt) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(plain eps, patched eps, what the patched layers saw) for a UNet built in `dtype`."""
    plain = unets.comfy_sd15_model(seed=4, dtype=dtype)
    (patched,) = run_node("ApplyIPAdapter", model=plain, ip_adapter=adapter, image_prompt=prompt, weight=0.9,
                          start_percent=0.0, end_percent=0.9)  # a window: the gate's dtype is exercised too
    seen = {"image_term": set(), "to_out_input": set()}

    def record(func, q, k, v, heads, **kwargs):
        out = func(q, k, v, heads, **kwargs)
        if k.shape[1] == 4:  # the image term (4 tokens)
            seen["image_term"].add((q.dtype, k.dtype, v.dtype, out.dtype))
        return out

    patched.model_options["transformer_options"]["optimized_attention_override"] = record
    unet = patched.model.diffusion_model
    hooks = [m.attn2.to_out[0].register_forward_pre_hook(lambda _, args: seen["to_out_input"].add(args[0].dtype))
             for m in unet.modules() if hasattr(m, "attn2")]
    try:
        return _eps(plain, dtype), _eps(patched, dtype), {**seen, "patched": patched}
    finally:
        for hook in hooks:
            hook.remove()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_low_precision_unet_keeps_its_dtype_and_stays_close_to_fp32(comfy, adapter_and_prompt, dtype) -> None:
    adapter, prompt = adapter_and_prompt
    plain32, patched32, _ = _run(torch.float32, adapter, prompt)
    plain, patched, seen = _run(dtype, adapter, prompt)

    assert seen["image_term"] == {(dtype, dtype, dtype, dtype)}  # image K/V arrive in the UNet's dtype
    assert seen["to_out_input"] == {dtype}  # what every patched layer returns keeps the dtype
    patches = seen["patched"].model_options["transformer_options"]["patches_replace"]["attn2"].values()
    for patch in patches:
        cached = patch.branch.cache.kv
        assert [key[1] for key in cached] == [dtype]  # projected once, stored in the UNet's dtype only
        assert all(t.dtype == dtype for layer in cached.values() for kv in layer.values() for t in kv)

    assert torch.isfinite(patched).all()
    delta32, delta = patched32 - plain32, patched - plain
    assert delta32.abs().max() > 1e-2  # the adapter really acts
    error = float((delta - delta32).abs().max() / delta32.abs().max())
    assert error < TOLERANCE[dtype], f"{dtype}: adapter contribution off by {error:.2e} (relative)"
