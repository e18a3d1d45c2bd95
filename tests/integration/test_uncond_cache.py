"""The zero-pixel uncond encoding of plus adapters: computed once per CLIP vision model, never stale.

Tower forwards are counted with a forward hook on ComfyUI's CLIP vision module, so the
image encode (`encode_image`) and the zero-pixel encode both count.
"""

from __future__ import annotations

import gc

import pytest
import torch
from support import checkpoints
from support.comfy_clip import tiny_comfy_clip_vision
from support.comfy_harness import run_node


def _counted(folder, seed: int):
    clip_vision = tiny_comfy_clip_vision(folder, hidden=1280, projection_dim=1024, seed=seed)
    calls: list[int] = []
    clip_vision.model.register_forward_hook(lambda *_: calls.append(1))
    return clip_vision, calls


@pytest.fixture
def plus(comfy, model_dirs):
    path = checkpoints.save_safetensors(checkpoints.ip_adapter_state_dict("ip-adapter-plus_sd15", "small", seed=2),
                                        model_dirs["ipadapter"] / "plus.safetensors")
    return run_node("LoadIPAdapter", adapter_name=path.name)[0]


def _images(count: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 64, 80, 3, generator=torch.Generator().manual_seed(seed))


def _encode(adapter, clip_vision, images):
    return run_node("EncodeImagePrompt", ip_adapter=adapter, clip_vision=clip_vision, image=images,
                    fit="center crop")[0]


def _fresh_uncond(adapter, clip_vision, count: int) -> torch.Tensor:
    """The uncond tokens from a fresh encode of zero normalised pixels, as the authors define them."""
    import comfy.model_management

    with torch.inference_mode():
        comfy.model_management.load_model_gpu(clip_vision.patcher)
        zeros = torch.zeros(1, 3, clip_vision.image_size, clip_vision.image_size)
        features = clip_vision.model(pixel_values=zeros, intermediate_output=-2)[1].float()
        tokens = adapter.model.project(features)
    return tokens.repeat(1, count, 1)


def test_zero_pixels_are_encoded_once_and_equal_a_fresh_encode(plus, tmp_path) -> None:
    clip_vision, calls = _counted(tmp_path, seed=1)
    first = _encode(plus, clip_vision, _images(1))
    assert len(calls) == 2  # the image, then the zero pixels
    assert torch.equal(first.uncond, _fresh_uncond(plus, clip_vision, 1))
    calls.clear()
    eight = _encode(plus, clip_vision, _images(8, seed=1))
    assert len(calls) == 1, "8 images in one tower call, the zero-pixel encoding reused"
    assert eight.tokens == 8 * 16
    assert torch.equal(eight.uncond, _fresh_uncond(plus, clip_vision, 8))
    assert plus.zero_pixels.computed == 1


def test_a_different_clip_vision_model_gets_its_own_encoding(plus, tmp_path) -> None:
    first, first_calls = _counted(tmp_path, seed=1)
    second, second_calls = _counted(tmp_path, seed=9)
    a = _encode(plus, first, _images(1))
    b = _encode(plus, second, _images(1))
    assert len(second_calls) == 2, "not served from the first model's entry"
    assert torch.equal(b.uncond, _fresh_uncond(plus, second, 1))
    assert (a.uncond - b.uncond).abs().max() > 1e-3
    first_calls.clear()
    again = _encode(plus, first, _images(1))
    assert len(first_calls) == 1 and torch.equal(again.uncond, a.uncond)  # each model keeps its own
    assert len(plus.zero_pixels) == 2
    del second, b
    gc.collect()
    assert len(plus.zero_pixels) == 1, "the entry dies with its model (weak reference)"


def test_patched_clip_vision_weights_are_not_served_a_stale_encoding(plus, tmp_path) -> None:
    clip_vision, calls = _counted(tmp_path, seed=1)
    before = _encode(plus, clip_vision, _images(1))
    key = next(k for k in clip_vision.model.state_dict() if k.endswith("layers.0.layer_norm1.bias"))
    shape = clip_vision.model.state_dict()[key].shape
    clip_vision.patcher.add_patches({key: (torch.full(shape, 0.5),)}, 1.0)  # a weight patch: new patches_uuid
    calls.clear()
    after = _encode(plus, clip_vision, _images(1))
    assert len(calls) == 2, "the zero pixels are encoded again with the patched weights"
    assert torch.equal(after.uncond, _fresh_uncond(plus, clip_vision, 1))
    assert not torch.equal(after.uncond, before.uncond)
