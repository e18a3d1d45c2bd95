"""ApplyIPAdapter on a Flux inside real ComfyUI: every double block fires once, invariants, refusals by name."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from support import checkpoints, flux_models, unets
from support.comfy_clip import tiny_comfy_clip_vision
from support.comfy_harness import run_node

SIGMA, GUIDANCE = 0.7, 3.5
DIT_KEYS = {("double_block", i) for i in range(19)}


@pytest.fixture(scope="module")
def flux(comfy):
    return flux_models.comfy_flux_model(seed=7)


@pytest.fixture(scope="module")
def vit_l(comfy, tmp_path_factory):
    return tiny_comfy_clip_vision(tmp_path_factory.mktemp("clip"), hidden=64, projection_dim=768, seed=1)


def _adapter(model_dirs, tokens: int = 4, seed: int = 3):
    path = flux_models.save(flux_models.xlabs_state_dict(tokens, seed=seed),
                            model_dirs["ipadapter"] / f"flux-ip-adapter-{tokens}-{seed}.safetensors")
    (adapter,) = run_node("LoadIPAdapter", adapter_name=path.name)
    return adapter


def _prompt(adapter, clip_vision, seed: int = 0, images: int = 1, **inputs):
    image = torch.rand(images, 96, 96, 3, generator=torch.Generator().manual_seed(seed))
    (prompt,) = run_node("EncodeImagePrompt", ip_adapter=adapter, clip_vision=clip_vision, image=image,
                         fit="center crop", **inputs)
    return prompt


def _apply(model, adapter, prompt, weight=1.0, start=0.0, end=1.0, **inputs):
    (patched,) = run_node("ApplyIPAdapter", model=model, ip_adapter=adapter, image_prompt=prompt, weight=weight,
                          start_percent=start, end_percent=end, **inputs)
    return patched


def _v(model, cfg: float = 3.0, size: tuple[int, int] = (8, 12)) -> torch.Tensor:
    g = torch.Generator().manual_seed(9)
    positive, negative = torch.randn(2, 1, 5, flux_models.CONTEXT, generator=g)
    pooled = torch.randn(2, 1, flux_models.VEC, generator=g)
    x = torch.randn(1, 16, *size, generator=g)
    return unets.comfy_eps(model, x, SIGMA, positive, pooled[1], negative=negative, negative_pooled=pooled[0],
                           cfg=cfg, cond_extra={"guidance": GUIDANCE})


def _dit(model) -> dict:
    return dict(model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {}))


def test_every_double_block_runs_the_image_term_once_per_forward(comfy, flux, model_dirs, vit_l) -> None:
    adapter = _adapter(model_dirs)
    patched = _apply(flux, adapter, _prompt(adapter, vit_l))
    assert set(_dit(patched)) == DIT_KEYS
    hits: Counter = Counter()

    def record(func, q, k, v, heads, **kwargs):
        options = kwargs["transformer_options"]
        if k.shape[2] == 4:  # only the image term has 4 keys
            hits[(options["block_type"], options["block_index"])] += 1
        return func(q, k, v, heads, **kwargs)

    patched.model_options["transformer_options"]["optimized_attention_override"] = record
    _v(patched)  # cfg 3: cond and uncond rows in one batch
    assert hits == Counter({("double", i): 1 for i in range(19)})


def test_weight_zero_and_an_empty_window_equal_the_unpatched_model_exactly(comfy, flux, model_dirs, vit_l) -> None:
    adapter = _adapter(model_dirs)
    prompt = _prompt(adapter, vit_l)
    plain = _v(flux)
    assert torch.equal(_v(_apply(flux, adapter, prompt, weight=0.0)), plain)
    assert torch.equal(_v(_apply(flux, adapter, prompt, start=1.0, end=1.0)), plain)
    assert torch.equal(_v(_apply(flux, adapter, prompt, start=0.0, end=0.1)), plain)  # ended before sigma 0.7
    assert not torch.equal(_v(_apply(flux, adapter, prompt, start=0.0, end=0.9)), plain)


def test_the_input_model_is_untouched_and_stacking_adds(comfy, flux, model_dirs, vit_l) -> None:
    before_options, before = dict(flux.model_options["transformer_options"]), _v(flux)
    adapter = _adapter(model_dirs)
    prompt = _prompt(adapter, vit_l)
    half_twice = _apply(_apply(flux, adapter, prompt, weight=0.5), adapter, prompt, weight=0.5)
    full = _v(_apply(flux, adapter, prompt, weight=1.0))
    torch.testing.assert_close(_v(half_twice), full, rtol=0, atol=1e-4)  # 0.5 + 0.5 = 1 in every block
    assert (full - before).abs().max() > 1e-2
    assert flux.model_options["transformer_options"] == before_options and _dit(flux) == {}
    assert torch.equal(_v(flux), before)
    other = _adapter(model_dirs, 16, seed=5)
    both = _apply(_apply(flux, adapter, prompt, weight=0.7), other, _prompt(other, vit_l, 2), weight=0.0)
    assert torch.equal(_v(both), _v(_apply(flux, adapter, prompt, weight=0.7)))


def test_a_foreign_block_replace_keeps_running_inside_ours(comfy, flux, model_dirs, vit_l) -> None:
    calls: Counter = Counter()

    def foreign(args, extra):  # another pack's replace on double block 3
        calls["foreign"] += 1
        out = extra["original_block"](args)
        return {"img": out["img"] * 1.01, "txt": out["txt"]}

    theirs = flux.clone()
    theirs.set_model_patch_replace(foreign, "dit", "double_block", 3)
    adapter = _adapter(model_dirs)
    prompt = _prompt(adapter, vit_l)
    both, ours = _apply(theirs, adapter, prompt), _apply(flux, adapter, prompt)
    assert _dit(both)[("double_block", 3)].previous is foreign
    v_both = _v(both)
    assert calls["foreign"] == 1
    assert (v_both - _v(theirs)).abs().max() > 1e-2 and (v_both - _v(ours)).abs().max() > 1e-3


def test_masks_follow_the_token_grid(comfy, flux, model_dirs, vit_l) -> None:
    adapter = _adapter(model_dirs)
    prompt = _prompt(adapter, vit_l)
    plain, unmasked = _v(flux, size=(9, 13)), _v(_apply(flux, adapter, prompt), size=(9, 13))  # odd: padded to 5x7
    ones, zeros = torch.ones(1, 72, 104), torch.zeros(1, 72, 104)
    # (bilinear resizing of a constant 1 may round to 1 - 6e-8)
    torch.testing.assert_close(_v(_apply(flux, adapter, prompt, attn_mask=ones), size=(9, 13)), unmasked, rtol=0,
                               atol=1e-5)
    assert torch.equal(_v(_apply(flux, adapter, prompt, attn_mask=zeros), size=(9, 13)), plain)
    half = ones.clone()
    half[:, :, :52] = 0
    masked = _v(_apply(flux, adapter, prompt, attn_mask=half), size=(9, 13))
    assert not torch.equal(masked, plain) and not torch.equal(masked, unmasked)


def test_layer_weights_take_one_number_per_double_block(comfy, flux, model_dirs, vit_l) -> None:
    adapter = _adapter(model_dirs)
    prompt = _prompt(adapter, vit_l)
    only_last = _apply(flux, adapter, prompt, layer_weights=", ".join(["0"] * 18 + ["1.5"]))
    assert set(_dit(only_last)) == {("double_block", 18)}
    assert _dit(only_last)[("double_block", 18)].weight == 1.5
    with pytest.raises(ValueError, match=r"ApplyIPAdapter layer_weights: got 16 numbers, but a Flux adapter has 19 "
                                         r"double blocks"):
        _apply(flux, adapter, prompt, layer_weights=", ".join(["1"] * 16))


@pytest.mark.parametrize("weight_type", ["style transfer", "ease in", "weak input", "composition precise"])
def test_unet_weight_types_are_refused_on_flux_with_what_to_use(comfy, flux, model_dirs, vit_l, weight_type) -> None:
    adapter = _adapter(model_dirs)
    with pytest.raises(ValueError, match=rf"ApplyIPAdapter weight_type: '{weight_type}' is built for the UNet.*"
                                         r"Use 'linear'.*layer_weights"):
        _apply(flux, adapter, _prompt(adapter, vit_l), weight_type=weight_type)


def test_adapters_and_models_of_different_families_are_refused_by_name(comfy, flux, model_dirs, vit_l) -> None:
    xlabs = _adapter(model_dirs)
    sd15 = unets.comfy_sd15_model(seed=3)
    with pytest.raises(ValueError, match=r"ApplyIPAdapter: 'flux-ip-adapter-4-3\.safetensors' is a Flux adapter "
                                         r"\(19 double blocks.*looks like SD1\.5"):
        _apply(sd15, xlabs, _prompt(xlabs, vit_l))
    path = checkpoints.save_safetensors(checkpoints.ip_adapter_state_dict("ip-adapter_sd15", "small", seed=1),
                                        model_dirs["ipadapter"] / "ip-adapter_sd15.safetensors")
    (unet_adapter,) = run_node("LoadIPAdapter", adapter_name=path.name)
    vit_h = tiny_comfy_clip_vision(model_dirs["clip_vision"], hidden=64, projection_dim=1024, seed=1)
    with pytest.raises(ValueError, match=r"'ip-adapter_sd15\.safetensors' is a SD1\.5 adapter .*looks like Flux"):
        _apply(flux, unet_adapter, _prompt(unet_adapter, vit_h))
    with pytest.raises(ValueError, match=r"EncodeImagePrompt: 'flux-ip-adapter-4-3\.safetensors' needs the ViT-L/14 "
                                         r"CLIP vision model \(image_embeds, width 768\), but 'clip_vision' gives width "
                                         r"1024\. Load OpenAI's clip-vit-large-patch14"):
        _prompt(xlabs, vit_h)


def test_several_images_a_negative_and_saved_prompts_work_as_for_unets(comfy, flux, model_dirs, vit_l) -> None:
    adapter = _adapter(model_dirs)
    negative = torch.rand(1, 96, 96, 3, generator=torch.Generator().manual_seed(4))
    prompt = _prompt(adapter, vit_l, images=2, negative_image=negative)
    assert prompt.cond.shape == (1, 8, flux_models.CONTEXT)  # concat: 2 images x 4 tokens
    average = _prompt(adapter, vit_l, images=2, combine_embeds="average")
    assert average.cond.shape == (1, 4, flux_models.CONTEXT)
    (encoded,) = run_node("CLIPVisionEncode", clip_vision=vit_l, image=negative, crop="center")
    with pytest.raises(ValueError, match=r"ImagePromptFromCLIPVision: .*XLabs v1 adapter.*encoding of a black image"):
        run_node("ImagePromptFromCLIPVision", ip_adapter=adapter, clip_vision_output=encoded)
    (from_output,) = run_node("ImagePromptFromCLIPVision", ip_adapter=adapter, clip_vision_output=encoded,
                              clip_vision=vit_l)
    (direct,) = run_node("EncodeImagePrompt", ip_adapter=adapter, clip_vision=vit_l, image=negative,
                         fit="center crop")
    assert torch.equal(from_output.cond, direct.cond) and torch.equal(from_output.uncond, direct.uncond)
    _, ui = run_node("SaveImagePrompt", return_ui=True, image_prompt=prompt, filename_prefix="flux/style")
    (saved,) = ui["image_prompts"]
    (loaded,) = run_node("LoadImagePrompt", prompt_file=f"flux/{saved['filename']} [output]")
    assert loaded.spec == prompt.spec and loaded.spec.base.value == "Flux"
    assert torch.equal(_v(_apply(flux, adapter, loaded)), _v(_apply(flux, adapter, prompt)))
