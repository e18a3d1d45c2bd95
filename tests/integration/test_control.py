"""Weight types, attention masks and embeds scaling on ApplyIPAdapter, inside real ComfyUI.

The figures of the mask test are printed (run with ``-s``) and quoted in the closing note.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from support import checkpoints, unets
from support.comfy_clip import tiny_comfy_clip_vision
from support.comfy_harness import run_node

SD15_IN = {n: ("input", n, 0) for n in (1, 2, 4, 5, 7, 8)}
SD15_OUT = {n: ("output", n, 0) for n in range(3, 12)}
SD15_ALL = {(s[0], s[1], 0) for s in unets.SD15_ATTN2_SLOTS}
SD15_STYLE = {SD15_IN[n] for n in (1, 2, 4, 5)} | {SD15_OUT[n] for n in range(5, 12)}
SD15_COMPOSITION = {SD15_IN[7], SD15_IN[8]}
SDXL_ALL = set(unets.SDXL_ATTN2_SLOTS)
SDXL_STYLE = {("output", 1, i) for i in range(10)}  # InstantStyle: up_blocks.0.attentions.1
SDXL_COMPOSITION = {("input", 8, i) for i in range(10)}  # InstantStyle: down_blocks.2.attentions.1

#: The layers each preset must patch (README "Weight types"; ComfyUI_IPAdapter_plus for the values).
PRESET_SLOTS = {
    ("sd15", "style transfer"): SD15_STYLE,
    ("sd15", "composition"): SD15_COMPOSITION,
    ("sd15", "strong style transfer"): SD15_ALL - SD15_COMPOSITION,
    ("sd15", "style and composition"): SD15_STYLE | SD15_COMPOSITION,
    ("sd15", "style transfer precise"): SD15_STYLE | SD15_COMPOSITION,
    ("sd15", "composition precise"): SD15_ALL,
    ("sdxl", "style transfer"): SDXL_STYLE,
    ("sdxl", "composition"): SDXL_COMPOSITION,
    ("sdxl", "strong style transfer"): SDXL_ALL - SDXL_COMPOSITION,
    ("sdxl", "style and composition"): SDXL_STYLE | SDXL_COMPOSITION,
    ("sdxl", "style transfer precise"): SDXL_STYLE | SDXL_COMPOSITION,
    ("sdxl", "composition precise"): SDXL_ALL,
}
COUNTED = {("sd15", "style transfer"), ("sd15", "composition"), ("sdxl", "style transfer"), ("sdxl", "composition"),
           ("sdxl", "style transfer precise")}


@pytest.fixture(scope="module")
def clip_vision(comfy, tmp_path_factory):
    return tiny_comfy_clip_vision(tmp_path_factory.mktemp("clip"), hidden=1280, projection_dim=1024, seed=1)


@pytest.fixture(scope="module")
def sd15(comfy):
    return unets.comfy_sd15_model(seed=3)


def _adapter(model_dirs, variant: str, seed: int = 4):
    path = checkpoints.save_safetensors(checkpoints.ip_adapter_state_dict(variant, "small", seed=seed),
                                        model_dirs["ipadapter"] / f"{variant}-{seed}.safetensors")
    return run_node("LoadIPAdapter", adapter_name=path.name)[0]


def _prompt(adapter, clip_vision, seed: int = 0):
    image = torch.rand(1, 96, 96, 3, generator=torch.Generator().manual_seed(seed))
    return run_node("EncodeImagePrompt", ip_adapter=adapter, clip_vision=clip_vision, image=image,
                    fit="center crop")[0]


def _apply(model, adapter, prompt, weight=1.0, start=0.0, end=1.0, **new_inputs):
    return run_node("ApplyIPAdapter", model=model, ip_adapter=adapter, image_prompt=prompt, weight=weight,
                    start_percent=start, end_percent=end, **new_inputs)[0]


def _eps(model, base: str = "sd15", height: int = 16, width: int = 16, batch: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(9)
    dim = 768 if base == "sd15" else 2048
    positive, negative = torch.randn(2, 1, 77, dim, generator=g)
    pooled = torch.randn(2, 1, 1280, generator=g) if base == "sdxl" else (None, None)
    x = torch.randn(batch, 4, height, width, generator=g)
    return unets.comfy_eps(model, x, unets.sigma_for_timestep(model, 500), positive, pooled[1],
                           negative=negative, negative_pooled=pooled[0], cfg=3.0)


def _attn2(model) -> dict:
    return model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})


@pytest.mark.parametrize("base,weight_type", sorted(PRESET_SLOTS))
def test_presets_patch_exactly_the_documented_layers(comfy, model_dirs, clip_vision, base, weight_type) -> None:
    """Registered slots for every preset; for the style/composition ones also image-attention hits per slot."""
    model = unets.comfy_sd15_model(seed=3) if base == "sd15" else unets.comfy_sdxl_model(seed=3)
    adapter = _adapter(model_dirs, "ip-adapter_sd15" if base == "sd15" else "ip-adapter_sdxl_vit-h")
    patched = _apply(model, adapter, _prompt(adapter, clip_vision), weight_type=weight_type)
    expected = PRESET_SLOTS[(base, weight_type)]
    assert set(_attn2(patched)) == expected
    if (base, weight_type) not in COUNTED:
        return
    hits: Counter = Counter()

    def record(func, q, k, v, heads, **kwargs):
        if k.shape[1] == 4:  # only the image term has 4 keys at a 32x32 latent
            hits[unets.attn2_call_key(kwargs["transformer_options"])] += 1
        return func(q, k, v, heads, **kwargs)

    patched.model_options["transformer_options"]["optimized_attention_override"] = record
    _eps(patched, base, 32, 32)
    assert set(hits) == expected and set(hits.values()) == {1}


def test_a_preset_changes_the_output_and_linear_equals_the_default(comfy, model_dirs, clip_vision, sd15) -> None:
    adapter = _adapter(model_dirs, "ip-adapter_sd15")
    prompt = _prompt(adapter, clip_vision)
    default, linear = _eps(_apply(sd15, adapter, prompt)), _eps(_apply(sd15, adapter, prompt, weight_type="linear"))
    assert torch.equal(default, linear)
    style = _eps(_apply(sd15, adapter, prompt, weight_type="style transfer"))
    assert (style - default).abs().max() > 1e-3 and (style - _eps(sd15)).abs().max() > 1e-3


def test_layer_weights_replace_the_table_and_all_zero_leaves_the_model(comfy, model_dirs, clip_vision, sd15) -> None:
    adapter = _adapter(model_dirs, "ip-adapter_sd15")
    prompt = _prompt(adapter, clip_vision)
    ones = ", ".join(["1"] * 16)
    assert torch.equal(_eps(_apply(sd15, adapter, prompt, weight_type="composition", layer_weights=ones)),
                       _eps(_apply(sd15, adapter, prompt)))
    only_middle = _apply(sd15, adapter, prompt, layer_weights=" ".join(["0"] * 15 + ["1.5"]))
    assert set(_attn2(only_middle)) == {("middle", 0, 0)}
    assert _attn2(only_middle)[("middle", 0, 0)].weight == 1.5
    assert torch.equal(_eps(_apply(sd15, adapter, prompt, layer_weights="0 " * 16)), _eps(sd15))


def _half_mask(height: int, width: int, left: bool = True) -> torch.Tensor:
    mask = torch.zeros(1, height, width)
    mask[..., : width // 2] = 1.0
    return mask if left else 1.0 - mask


def _sample(model, height: int = 16, width: int = 24, steps: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    positive = [[torch.randn(1, 77, 768, generator=g), {}]]
    negative = [[torch.randn(1, 77, 768, generator=g), {}]]
    latent = {"samples": torch.zeros(1, 4, height, width)}
    (out,) = run_node("KSampler", model=model, seed=5, steps=steps, cfg=4.0, sampler_name="euler",
                      scheduler="normal", positive=positive, negative=negative, latent_image=latent, denoise=1.0)
    return out["samples"]


def test_half_image_mask_confines_the_term_in_every_layer(comfy, model_dirs, clip_vision, sd15) -> None:
    """In a real forward (latent 32x48, mask given at image size 256x384), every layer's image term is
    exactly 0 on tokens well right of the middle and non-zero on tokens well left of it."""
    adapter = _adapter(model_dirs, "ip-adapter-plus_sd15")
    masked = _apply(sd15, adapter, _prompt(adapter, clip_vision), attn_mask=_half_mask(256, 384)[0])
    from comfy.ldm.modules import attention

    added: dict = {}
    for key, ours in list(_attn2(masked).items()):
        def probe(q, k, v, extra_options, ours=ours, key=key):
            out = ours(q, k, v, extra_options)
            text = attention.optimized_attention(q, k, v, extra_options["n_heads"])
            added[key] = ((out - text).abs().amax(dim=(0, 2)), q.shape[1])
            return out
        masked.set_model_attn2_replace(probe, *key)
    _eps(masked, height=32, width=48)
    assert set(added) == SD15_ALL
    for key, (diff, tokens) in added.items():
        cols = next(48 // 2 ** d for d in range(4) if (32 // 2 ** d) * (48 // 2 ** d) == tokens)
        centre = (torch.arange(cols) + 0.5) / cols
        grid = diff.view(-1, cols)
        assert torch.all(grid[:, centre > 0.5 + 1 / cols] == 0), key
        assert torch.all(grid[:, centre < 0.5 - 1 / cols] > 0), key


def test_half_image_mask_output_figures(comfy, model_dirs, clip_vision, sd15) -> None:
    """Output level, left-half mask, latent 16x24: the right half moves less than the left.

    Only "less", not "far less": this random tiny UNet mixes every position globally (GroupNorm
    statistics, a 2x3 deepest grid, near-uniform random self-attention), so a change in one half
    reaches the other at 0.5-0.7x its size even when only the last full-resolution layers are
    patched. The per-layer test above shows the mask itself is exact.
    """
    adapter = _adapter(model_dirs, "ip-adapter-plus_sd15")
    masked = _apply(sd15, adapter, _prompt(adapter, clip_vision), attn_mask=_half_mask(128, 192)[0])
    inside = torch.zeros(16, 24, dtype=torch.bool)
    inside[:, :12] = True
    for name, plain, with_mask in (("eps", _eps(sd15, height=16, width=24), _eps(masked, height=16, width=24)),
                                   ("latent", _sample(sd15), _sample(masked))):
        diff = (with_mask - plain).abs()[0]  # [4, 16, 24]
        fig = {"inside_max": diff[:, inside].max().item(), "inside_mean": diff[:, inside].mean().item(),
               "outside_max": diff[:, ~inside].max().item(), "outside_mean": diff[:, ~inside].mean().item()}
        print(f"\nmask {name}: " + ", ".join(f"{k} {v:.3e}" for k, v in fig.items()))
        assert fig["inside_mean"] > 1e-3 and fig["outside_mean"] < 0.8 * fig["inside_mean"], fig
        assert fig["outside_max"] < fig["inside_max"], fig


@pytest.mark.parametrize("height,width", [(16, 24), (15, 21)])  # odd sizes: grids are ceil-divided
def test_empty_and_full_masks_are_exact_at_any_size(comfy, model_dirs, clip_vision, sd15, height, width) -> None:
    adapter = _adapter(model_dirs, "ip-adapter_sd15")
    prompt = _prompt(adapter, clip_vision)
    unmasked = _eps(_apply(sd15, adapter, prompt), height=height, width=width)
    full = _apply(sd15, adapter, prompt, attn_mask=torch.ones(37, 53))  # any size: resized
    empty = _apply(sd15, adapter, prompt, attn_mask=torch.zeros(1, 8, 8))
    # Bilinear weights of an all-ones mask sum to 1 within an ulp, so "full" matches to rounding.
    torch.testing.assert_close(_eps(full, height=height, width=width), unmasked, rtol=0, atol=1e-4)
    assert torch.equal(_eps(empty, height=height, width=width), _eps(sd15, height=height, width=width))


def test_a_batch_of_masks_maps_one_per_latent(comfy, model_dirs, clip_vision, sd15) -> None:
    adapter = _adapter(model_dirs, "ip-adapter_sd15")
    prompt = _prompt(adapter, clip_vision)
    masks = torch.stack([torch.ones(64, 64), torch.zeros(64, 64)])
    out = _eps(_apply(sd15, adapter, prompt, attn_mask=masks), batch=2)
    plain, unmasked = _eps(sd15, batch=2), _eps(_apply(sd15, adapter, prompt), batch=2)
    assert torch.equal(out[0], unmasked[0]) and torch.equal(out[1], plain[1])
    three = _apply(sd15, adapter, prompt, attn_mask=torch.ones(3, 8, 8))
    with pytest.raises(Exception, match="attn_mask: 3 masks for a batch of 2 latents"):
        _eps(three, batch=2)


def test_embeds_scaling_modes_all_act_and_differ(comfy, model_dirs, clip_vision, sd15) -> None:
    adapter = _adapter(model_dirs, "ip-adapter-plus_sd15")
    prompt = _prompt(adapter, clip_vision)
    modes = ["V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty"]
    outs = {m: _eps(_apply(sd15, adapter, prompt, weight=1.6, embeds_scaling=m)) for m in modes}
    plain = _eps(sd15)
    assert torch.equal(outs["V only"], _eps(_apply(sd15, adapter, prompt, weight=1.6)))  # the default
    for i, a in enumerate(modes):
        assert (outs[a] - plain).abs().max() > 1e-4, a
        for b in modes[i + 1:]:
            assert (outs[a] - outs[b]).abs().max() > 1e-5, (a, b)


def test_new_inputs_are_optional_appended_and_have_tooltips(comfy, pack) -> None:
    cls = comfy.node_class("ApplyIPAdapter")
    types = cls.INPUT_TYPES()
    assert list(types["required"]) == ["model", "ip_adapter", "image_prompt", "weight", "start_percent",
                                       "end_percent"]  # saved prompts without the new inputs stay valid
    optional = list(types["optional"])
    # each release appends after what the last one had (saved widget values keep their positions)
    assert optional[:4] == ["weight_type", "embeds_scaling", "attn_mask", "layer_weights"]
    for name in optional:
        assert types["optional"][name][1].get("tooltip"), name
    assert "16 numbers for SD1.5, 70 for SDXL" in types["optional"]["layer_weights"][1]["tooltip"]


@pytest.mark.parametrize("inputs,message", [
    ({"layer_weights": "1, 1, 1"}, r"ApplyIPAdapter layer_weights: got 3 numbers, but a SD1\.5 adapter has 16"),
    ({"layer_weights": "1 " * 15 + "one"}, r"ApplyIPAdapter layer_weights: item 16 'one' is not a number"),
    ({"attn_mask": torch.ones(1, 1, 8, 8)}, r"ApplyIPAdapter attn_mask: expected a MASK"),
    ({"embeds_scaling": "K only"}, r"ApplyIPAdapter embeds_scaling: unknown 'K only'"),
    ({"weight_type": "style"}, r"ApplyIPAdapter weight_type: unknown 'style'"),
])
def test_invalid_inputs_are_refused_naming_the_input(comfy, model_dirs, clip_vision, sd15, inputs, message) -> None:
    adapter = _adapter(model_dirs, "ip-adapter_sd15")
    with pytest.raises(Exception, match=message):
        _apply(sd15, adapter, _prompt(adapter, clip_vision), **inputs)


def test_two_chained_adapters_both_act_and_removing_either_recovers_the_other(comfy, model_dirs, clip_vision,
                                                                              sd15) -> None:
    """A: base adapter, image 1, weight 0.8, left mask, window 0..0.7. B: plus adapter, image 2, weight 0.5,
    right mask, window 0.2..1, style transfer. Sampled with KSampler (4 steps, cfg 4)."""
    first, second = _adapter(model_dirs, "ip-adapter_sd15", 1), _adapter(model_dirs, "ip-adapter-plus_sd15", 2)
    prompt_a, prompt_b = _prompt(first, clip_vision, 1), _prompt(second, clip_vision, 2)

    def a(model, weight=0.8):
        return _apply(model, first, prompt_a, weight, 0.0, 0.7, attn_mask=_half_mask(128, 192)[0])

    def b(model, weight=0.5):
        return _apply(model, second, prompt_b, weight, 0.2, 1.0, weight_type="style transfer",
                      attn_mask=_half_mask(128, 192, left=False)[0])

    plain, a_alone, b_alone = _sample(sd15), _sample(a(sd15)), _sample(b(sd15))
    chained = a(sd15)
    both = _sample(b(chained))
    for other in (plain, a_alone, b_alone):
        assert (both - other).abs().max() > 1e-2
    assert (a_alone - plain).abs().max() > 1e-2 and (b_alone - plain).abs().max() > 1e-2
    assert torch.equal(_sample(chained), a_alone)  # B's clone left A's model untouched
    assert torch.equal(_sample(b(a(sd15, weight=0.0))), b_alone)  # A removed (weight 0): B alone, exactly
    assert torch.equal(_sample(b(a(sd15), weight=0.0)), a_alone)  # B removed: A alone, exactly
    assert torch.equal(_sample(b(sd15)), b_alone) and torch.equal(_sample(sd15), plain)  # nothing leaked
    torch.testing.assert_close(_sample(a(b(sd15))), both, rtol=1e-4, atol=1e-3)  # order only rounds
