"""ApplyIPAdapter inside real ComfyUI: every slot fires, invariants hold, the input model is untouched."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from support import checkpoints, unets
from support.comfy_clip import tiny_comfy_clip_vision
from support.comfy_harness import run_node

TIMESTEP = 500


@pytest.fixture(scope="module")
def sd15(comfy):
    return unets.comfy_sd15_model(seed=3)


@pytest.fixture(scope="module")
def clip_vision(comfy, tmp_path_factory):
    return tiny_comfy_clip_vision(tmp_path_factory.mktemp("clip"), hidden=1280, projection_dim=1024, seed=1)


def _adapter(model_dirs, variant: str, seed: int = 4):
    path = checkpoints.save_safetensors(checkpoints.ip_adapter_state_dict(variant, "small", seed=seed),
                                        model_dirs["ipadapter"] / f"{variant}-{seed}.safetensors")
    (adapter,) = run_node("LoadIPAdapter", adapter_name=path.name)
    return adapter


def _prompt(adapter, clip_vision, seed: int = 0):
    image = torch.rand(1, 96, 96, 3, generator=torch.Generator().manual_seed(seed))
    (prompt,) = run_node("EncodeImagePrompt", ip_adapter=adapter, clip_vision=clip_vision, image=image,
                         fit="center crop")
    return prompt


def _apply(model, adapter, prompt, weight=1.0, start=0.0, end=1.0):
    (patched,) = run_node("ApplyIPAdapter", model=model, ip_adapter=adapter, image_prompt=prompt,
                          weight=weight, start_percent=start, end_percent=end)
    return patched


def _eps(model, base: str = "sd15", size: int = 16, cfg: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(9)
    dim = 768 if base == "sd15" else 2048
    positive, negative = torch.randn(2, 1, 77, dim, generator=g)
    pooled = torch.randn(2, 1, 1280, generator=g) if base == "sdxl" else (None, None)
    x = torch.randn(1, 4, size, size, generator=g)
    return unets.comfy_eps(model, x, unets.sigma_for_timestep(model, TIMESTEP), positive, pooled[1],
                           negative=negative, negative_pooled=pooled[0], cfg=cfg)


def _attn2_snapshot(model) -> dict:
    return dict(model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {}))


@pytest.mark.parametrize("base,variant,slots", [("sd15", "ip-adapter_sd15", unets.SD15_ATTN2_SLOTS),
                                                 ("sdxl", "ip-adapter_sdxl_vit-h", unets.SDXL_ATTN2_SLOTS)])
def test_every_registered_slot_runs_the_image_branch_once_per_call(comfy, model_dirs, clip_vision, base, variant,
                                                                   slots) -> None:
    """Counts image-attention calls (4 image tokens) per layer through ComfyUI's attention override hook."""
    model = unets.comfy_sd15_model(seed=3) if base == "sd15" else unets.comfy_sdxl_model(seed=3)
    adapter = _adapter(model_dirs, variant)
    patched = _apply(model, adapter, _prompt(adapter, clip_vision))
    registered = _attn2_snapshot(patched)
    assert len(registered) == len(slots) == (16 if base == "sd15" else 70)
    hits: Counter = Counter()

    def record(func, q, k, v, heads, **kwargs):
        if k.shape[1] == 4:  # only the image term has 4 keys (latent 32x32: no 2x2 self-attention)
            hits[unets.attn2_call_key(kwargs["transformer_options"])] += 1
        return func(q, k, v, heads, **kwargs)

    patched.model_options["transformer_options"]["optimized_attention_override"] = record
    _eps(patched, base, size=32)
    expected = {(s[0], s[1], s[2] if len(s) == 3 else 0) for s in slots}
    assert set(hits) == expected
    assert set(hits.values()) == {1}  # cond and uncond batched: one call per slot per forward


def test_the_image_term_takes_fused_sdpa_where_comfyui_selected_a_fallback(comfy, model_dirs, clip_vision,
                                                                           sd15) -> None:
    """ComfyUI on the CPU selects sub-quadratic attention: the text branch keeps it, the 4-key image term
    takes ComfyUI's registered "pytorch" function, and both still pass through the override hook."""
    from comfy.ldm.modules import attention

    assert attention.optimized_attention is attention.attention_sub_quad  # what this test is about
    adapter = _adapter(model_dirs, "ip-adapter_sd15")
    patched = _apply(sd15, adapter, _prompt(adapter, clip_vision))
    backends: dict[str, set] = {"text": set(), "image": set()}

    def record(func, q, k, v, heads, **kwargs):
        backends["image" if k.shape[1] == 4 else "text"].add(func.__name__)
        return func(q, k, v, heads, **kwargs)

    patched.model_options["transformer_options"]["optimized_attention_override"] = record
    _eps(patched, size=32)
    assert backends == {"text": {"attention_sub_quad"}, "image": {"attention_pytorch"}}


@pytest.mark.parametrize("selected,image", [("attention_sub_quad", "attention_pytorch"),
                                             ("attention_split", "attention_pytorch"),
                                             ("attention_basic", "attention_pytorch"),
                                             ("attention_pytorch", "attention_pytorch"),
                                             ("a user's backend", "a user's backend")])
def test_the_image_term_keeps_every_fused_backend_and_replaces_only_the_fallbacks(comfy, pack, monkeypatch,
                                                                                    selected, image) -> None:
    """The rule of `image_attention_backend` for each backend ComfyUI may have selected at start-up."""
    import importlib

    from comfy.ldm.modules import attention

    def users_backend(q, k, v, heads, **kwargs):  # e.g. xformers, flash or sage: a fused kernel
        return attention.attention_pytorch(q, k, v, heads, **kwargs)

    chosen = users_backend if selected == "a user's backend" else getattr(attention, selected)
    monkeypatch.setattr(attention, "optimized_attention", chosen)  # what ComfyUI sets once at import
    bridge = importlib.import_module(f"{pack.module.__name__}.nodes.comfy_bridge")
    expected = users_backend if image == "a user's backend" else getattr(attention, image)
    assert bridge.image_attention_backend() is expected
    assert bridge.attention_backend() is chosen  # the text branch always keeps the selection


def test_weight_zero_equals_the_unpatched_model_exactly(comfy, model_dirs, clip_vision, sd15) -> None:
    adapter = _adapter(model_dirs, "ip-adapter-plus_sd15")
    assert torch.equal(_eps(_apply(sd15, adapter, _prompt(adapter, clip_vision), weight=0.0)), _eps(sd15))


def test_an_empty_schedule_window_equals_the_unpatched_model_exactly(comfy, model_dirs, clip_vision, sd15) -> None:
    adapter = _adapter(model_dirs, "ip-adapter_sd15")
    prompt = _prompt(adapter, clip_vision)
    assert torch.equal(_eps(_apply(sd15, adapter, prompt, start=1.0, end=1.0)), _eps(sd15))
    # A window that holds the sampled sigma acts; one that ended before it does not.
    assert not torch.equal(_eps(_apply(sd15, adapter, prompt, start=0.0, end=0.9)), _eps(sd15))
    assert torch.equal(_eps(_apply(sd15, adapter, prompt, start=0.0, end=0.1)), _eps(sd15))


def test_the_input_model_is_never_changed(comfy, model_dirs, clip_vision, sd15) -> None:
    before_options, before_eps = _attn2_snapshot(sd15), _eps(sd15)
    adapter = _adapter(model_dirs, "ip-adapter_sd15")
    patched = _apply(sd15, adapter, _prompt(adapter, clip_vision))
    _eps(patched)
    assert _attn2_snapshot(sd15) == before_options == {}
    assert torch.equal(_eps(sd15), before_eps)
    assert patched is not sd15 and len(_attn2_snapshot(patched)) == 16


def test_a_second_adapter_at_weight_zero_changes_nothing(comfy, model_dirs, clip_vision, sd15) -> None:
    first, second = _adapter(model_dirs, "ip-adapter_sd15", 1), _adapter(model_dirs, "ip-adapter-plus_sd15", 2)
    one = _apply(sd15, first, _prompt(first, clip_vision, 1), weight=0.7)
    both = _apply(one, second, _prompt(second, clip_vision, 2), weight=0.0)
    assert torch.equal(_eps(both), _eps(one))


def test_applying_twice_stacks_the_image_terms(comfy, model_dirs, clip_vision, sd15) -> None:
    adapter = _adapter(model_dirs, "ip-adapter_sd15")
    prompt = _prompt(adapter, clip_vision)
    half_twice = _apply(_apply(sd15, adapter, prompt, weight=0.5), adapter, prompt, weight=0.5)
    full, half = _eps(_apply(sd15, adapter, prompt, weight=1.0)), _eps(_apply(sd15, adapter, prompt, weight=0.5))
    torch.testing.assert_close(_eps(half_twice), full, rtol=0, atol=1e-4)  # 0.5 + 0.5 = 1, not 0.5
    assert (full - half).abs().max() > 1e-2


def test_reapplying_reproduces_and_clones_share_adapter_weights(comfy, model_dirs, clip_vision, sd15) -> None:
    adapter = _adapter(model_dirs, "ip-adapter_sd15")
    prompt = _prompt(adapter, clip_vision)
    first, second = _apply(sd15, adapter, prompt, 0.6), _apply(sd15, adapter, prompt, 0.6)
    assert torch.equal(_eps(first), _eps(second))
    key = ("middle", 0, 0)
    clone = first.clone()
    patch_a, patch_b = _attn2_snapshot(first)[key], _attn2_snapshot(clone)[key]
    assert patch_a is patch_b  # immutable patch objects are shared, not deep-copied
    weight = patch_a.branch.adapter.ip_adapter["31"].to_k_ip.weight
    assert weight.data_ptr() == _attn2_snapshot(second)[key].branch.adapter.ip_adapter["31"].to_k_ip.weight.data_ptr()
    assert adapter.patcher in patch_a.models()


def test_ksampler_runs_with_the_patched_model_and_leaves_the_input_alone(comfy, model_dirs, clip_vision,
                                                                         sd15) -> None:
    adapter = _adapter(model_dirs, "ip-adapter-plus_sd15")
    patched = _apply(sd15, adapter, _prompt(adapter, clip_vision))
    g = torch.Generator().manual_seed(1)
    positive, negative = [[torch.randn(1, 77, 768, generator=g), {}]], [[torch.randn(1, 77, 768, generator=g), {}]]
    latent = {"samples": torch.zeros(1, 4, 16, 16)}

    def sample(model):
        (out,) = run_node("KSampler", model=model, seed=5, steps=3, cfg=4.0, sampler_name="euler",
                          scheduler="normal", positive=positive, negative=negative, latent_image=latent, denoise=1.0)
        return out["samples"]

    plain_before = sample(sd15)
    with_image = sample(patched)
    assert torch.isfinite(with_image).all()
    assert (with_image - plain_before).abs().max() > 1e-2
    assert torch.equal(sample(sd15), plain_before)  # nothing leaked into the input model
