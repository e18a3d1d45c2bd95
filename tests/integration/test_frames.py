"""Frames, schedules and shapes in real ComfyUI: one reference per latent, context windows, chunked and tiled
encoding, crop position, the weight schedule through Apply IP-Adapter, regional prompts."""

from __future__ import annotations

import pytest
import torch
from support import checkpoints, unets
from support.comfy_clip import tiny_comfy_clip_vision
from support.comfy_harness import run_node

BASE, PLUS = "ip-adapter_sd15", "ip-adapter-plus_sd15"


@pytest.fixture(scope="module")
def clip_vision(comfy, tmp_path_factory):
    return tiny_comfy_clip_vision(tmp_path_factory.mktemp("clip"), hidden=1280, projection_dim=1024, seed=3)


@pytest.fixture(scope="module")
def sd15(comfy):
    return unets.comfy_sd15_model(seed=5)


def _adapter(model_dirs, variant: str = BASE):
    path = checkpoints.save_safetensors(checkpoints.ip_adapter_state_dict(variant, "small", seed=7),
                                        model_dirs["ipadapter"] / f"{variant}.safetensors")
    return run_node("LoadIPAdapter", adapter_name=path.name)[0]


def _images(count: int, seed: int, height: int = 64, width: int = 64) -> torch.Tensor:
    return torch.rand(count, height, width, 3, generator=torch.Generator().manual_seed(seed))


def _encode(adapter, clip_vision, image, **extra):
    return run_node("EncodeImagePrompt", ip_adapter=adapter, clip_vision=clip_vision, image=image,
                    fit=extra.pop("fit", "center crop"), **extra)[0]


def _apply(model, adapter, prompt, weight: float = 1.0, **extra):
    return run_node("ApplyIPAdapter", model=model, ip_adapter=adapter, image_prompt=prompt, weight=weight,
                    start_percent=extra.pop("start_percent", 0.0), end_percent=extra.pop("end_percent", 1.0),
                    **extra)[0]


def _eps(model, x: torch.Tensor, sigma: float = 2.0, positive=None) -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    text, negative = torch.randn(2, 1, 77, 768, generator=g)
    return unets.comfy_eps(model, x, sigma, positive if positive is not None else text, negative=negative, cfg=4.0)


def _latents(count: int, size: int = 16) -> torch.Tensor:
    return torch.randn(count, 4, size, size, generator=torch.Generator().manual_seed(21))


def test_one_reference_per_latent_equals_each_latent_with_its_own_reference(comfy, model_dirs, clip_vision,
                                                                             sd15) -> None:
    adapter, images, x = _adapter(model_dirs), _images(3, 1), _latents(3)
    per_latent = _encode(adapter, clip_vision, images, combine_embeds="one per latent")
    assert per_latent.cond.shape[0] == 3 and per_latent.uncond.shape == per_latent.cond.shape
    batched = _eps(_apply(sd15, adapter, per_latent), x)
    for i in range(3):
        alone = _eps(_apply(sd15, adapter, _encode(adapter, clip_vision, images[i:i + 1])), x[i:i + 1])
        torch.testing.assert_close(batched[i:i + 1], alone, atol=2e-5, rtol=0)
    one = _encode(adapter, clip_vision, images[:1], combine_embeds="one per latent")  # a batch of 1 serves all
    torch.testing.assert_close(_eps(_apply(sd15, adapter, one), x),
                               _eps(_apply(sd15, adapter, _encode(adapter, clip_vision, images[:1])), x),
                               atol=2e-5, rtol=0)
    with pytest.raises(Exception, match="3 image prompt rows .* for a batch of 2 latents"):
        _eps(_apply(sd15, adapter, per_latent), x[:2])


def test_context_windows_give_each_window_its_frames_references_and_masks(comfy, model_dirs, clip_vision,
                                                                           sd15) -> None:
    """4 frames in windows of 2 (no overlap, flat fuse): each window equals an unwindowed run on its frames."""
    adapter, images, x = _adapter(model_dirs), _images(4, 2), _latents(4)
    masks = torch.zeros(4, 16, 16)
    for frame in range(4):
        masks[frame, :, : 4 * (frame + 1)] = 1.0
    weights = [1.0, 0.5, 0.8, 0.3]
    comfy.load_builtin_extras(["nodes_context_windows.py"])
    prompt = _encode(adapter, clip_vision, images, combine_embeds="one per latent")
    patched = _apply(sd15, adapter, prompt, attn_mask=masks, latent_weights_list=weights)
    (windowed_model,) = run_node("ContextWindowsManual", model=patched, context_length=2, context_overlap=0,
                                 context_schedule="standard_static", context_stride=1, closed_loop=False,
                                 fuse_method="flat", dim=0, freenoise=False)
    windowed = _eps(windowed_model, x)
    differences = []
    for frames in ([0, 1], [2, 3]):
        part = _encode(adapter, clip_vision, images[frames], combine_embeds="one per latent")
        alone = _eps(_apply(sd15, adapter, part, attn_mask=masks[frames],
                            latent_weights=", ".join(str(weights[f]) for f in frames)), x[frames])
        differences.append((windowed[frames] - alone).abs().max().item())
    print(f"context windows vs unwindowed runs per window: max |difference| {max(differences):.3g}")
    # (float rounding only: 4 vs 2 images per CLIP / projection call). Without the window's frame pick, the
    # 2-frame calls would meet 4 prompt rows and 4 masks and be refused, so the windows did run.
    assert max(differences) < 2e-5


@pytest.mark.parametrize("variant", [BASE, PLUS])
@pytest.mark.parametrize("mode", ["concat", "one per latent"])
def test_chunked_encoding_equals_one_call(comfy, model_dirs, clip_vision, variant, mode) -> None:
    adapter, images = _adapter(model_dirs, variant), _images(5, 3)
    whole = _encode(adapter, clip_vision, images, combine_embeds=mode, encode_chunk=16)
    chunked = _encode(adapter, clip_vision, images, combine_embeds=mode, encode_chunk=2, image_weights="1,2,3,4,5")
    weighted = _encode(adapter, clip_vision, images, combine_embeds=mode, image_weights="1,2,3,4,5")
    torch.testing.assert_close(chunked.cond, weighted.cond, atol=1e-5, rtol=0)
    torch.testing.assert_close(chunked.uncond, weighted.uncond, atol=1e-5, rtol=0)
    assert not torch.allclose(whole.cond, weighted.cond)


def test_tiled_encoding_puts_the_tiles_tokens_side_by_side(comfy, model_dirs, clip_vision) -> None:
    adapter = _adapter(model_dirs)
    wide = _images(2, 4, height=64, width=160)  # 3 tiles of 64: offsets 0, 48, 96
    tiled = _encode(adapter, clip_vision, wide, fit="tiled", combine_embeds="one per latent")
    tokens = adapter.spec.tokens
    assert tiled.cond.shape[:2] == (2, 3 * tokens)
    for index, left in enumerate((0, 48, 96)):
        tile = _encode(adapter, clip_vision, wide[:, :, left:left + 64], combine_embeds="one per latent")
        torch.testing.assert_close(tiled.cond[:, index * tokens:(index + 1) * tokens], tile.cond, atol=1e-5, rtol=0)
    concat = _encode(adapter, clip_vision, wide, fit="tiled", encode_chunk=2)
    assert concat.cond.shape[:2] == (1, 6 * tokens)
    torch.testing.assert_close(concat.cond.reshape(2, -1, concat.cond.shape[-1]), tiled.cond, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="fit 'tiled' .* not 'average'"):
        _encode(adapter, clip_vision, wide, fit="tiled", combine_embeds="average")


def test_crop_position_cuts_the_square_where_asked(comfy, model_dirs, clip_vision) -> None:
    adapter, tall = _adapter(model_dirs), _images(1, 5, height=120, width=64)
    top = _encode(adapter, clip_vision, tall, crop_position="top")
    assert torch.equal(top.cond, _encode(adapter, clip_vision, tall[:, :64]).cond)
    bottom = _encode(adapter, clip_vision, tall, crop_position="bottom")
    assert torch.equal(bottom.cond, _encode(adapter, clip_vision, tall[:, -64:]).cond)
    assert torch.equal(_encode(adapter, clip_vision, tall, crop_position="center").cond,
                       _encode(adapter, clip_vision, tall).cond)


def test_a_weight_curve_gives_the_weight_of_its_step(comfy, model_dirs, clip_vision, sd15) -> None:
    adapter, x = _adapter(model_dirs), _latents(1)
    prompt = _encode(adapter, clip_vision, _images(1, 6))
    sigma = float(sd15.get_model_object("model_sampling").percent_to_sigma(0.5))
    ramp = _eps(_apply(sd15, adapter, prompt, 1.0, weight_schedule="linear", end_weight=0.0), x, sigma)
    half = _eps(_apply(sd15, adapter, prompt, 0.5), x, sigma)
    torch.testing.assert_close(ramp, half, atol=2e-3, rtol=0)
    assert (ramp - _eps(_apply(sd15, adapter, prompt, 1.0), x, sigma)).abs().max() > 1e-3
    constant = _eps(_apply(sd15, adapter, prompt, 0.7, weight_schedule="constant", end_weight=0.1), x, sigma)
    assert torch.equal(constant, _eps(_apply(sd15, adapter, prompt, 0.7), x, sigma))


def test_regions_are_one_apply_with_a_masked_term_and_masked_text_each(comfy, model_dirs, clip_vision, sd15) -> None:
    adapter, x = _adapter(model_dirs), _latents(1)
    left_prompt, right_prompt = (_encode(adapter, clip_vision, _images(1, seed)) for seed in (7, 8))
    left, right = torch.zeros(1, 32, 32), torch.zeros(1, 32, 32)
    left[..., :16], right[..., 16:] = 1.0, 1.0
    text = [[torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(1)), {}]]
    regions, positive, negative = run_node("IPAdapterRegion", image_prompt=left_prompt, mask=left, weight=0.8,
                                           positive=text)
    regions, positive, negative = run_node("IPAdapterRegion", image_prompt=right_prompt, mask=right, weight=0.5,
                                           previous=regions)
    assert len(positive) == 1 and torch.equal(positive[0][1]["mask"], left) and negative == []
    assert positive[0][1]["set_area_to_bounds"] is False and "mask" not in text[0][1]
    one_apply = _eps(_apply(sd15, adapter, regions, 0.9), x)
    chained = _apply(_apply(sd15, adapter, left_prompt, 0.9 * 0.8, attn_mask=left), adapter, right_prompt, 0.9 * 0.5,
                     attn_mask=right)
    assert torch.equal(one_apply, _eps(chained, x))
    with pytest.raises(ValueError, match="carry their own masks"):
        _apply(sd15, adapter, regions, attn_mask=left)
    with pytest.raises(ValueError, match="SaveImagePrompt: 'image_prompt' is a chain of IP-Adapter Region"):
        run_node("SaveImagePrompt", image_prompt=regions, filename_prefix="regions")
    with pytest.raises(ValueError, match="'previous' must be the 'regions' output"):
        run_node("IPAdapterRegion", image_prompt=left_prompt, mask=left, weight=1.0, previous=left_prompt)
