"""Bad input reaches the user as a clear message naming the node, input or file, never a torch trace."""

from __future__ import annotations

import pytest
import torch
from support import checkpoints, unets
from support.comfy_clip import tiny_comfy_clip_vision
from support.comfy_harness import run_node


@pytest.fixture(scope="module")
def clip_h(comfy, tmp_path_factory):
    return tiny_comfy_clip_vision(tmp_path_factory.mktemp("clip"), hidden=1280, projection_dim=1024)


def _load(model_dirs, variant: str):
    path = checkpoints.save_safetensors(checkpoints.ip_adapter_state_dict(variant, "small"),
                                        model_dirs["ipadapter"] / f"{variant}.safetensors")
    return run_node("LoadIPAdapter", adapter_name=path.name)[0]


def test_truncated_file_names_the_file(comfy, model_dirs) -> None:
    path = checkpoints.write_truncated_safetensors(model_dirs["ipadapter"] / "broken.safetensors")
    with pytest.raises(ValueError, match=r"'broken\.safetensors'.*truncated.*download it again"):
        run_node("LoadIPAdapter", adapter_name=path.name)


def test_unknown_keys_are_named(comfy, model_dirs) -> None:
    sd = checkpoints.state_dict_with_unknown_key("ip-adapter_sd15")
    path = checkpoints.save_safetensors(sd, model_dirs["ipadapter"] / "odd.safetensors")
    with pytest.raises(ValueError, match=r"'odd\.safetensors'.*image_proj\.unexpected_extra\.weight"):
        run_node("LoadIPAdapter", adapter_name=path.name)


def test_sdxl_adapter_on_sd15_model_and_the_reverse(comfy, model_dirs, clip_h) -> None:
    image = torch.rand(1, 64, 64, 3)
    for variant, model, wrong in (("ip-adapter_sdxl_vit-h", unets.comfy_sd15_model(), "SD1.5"),
                                  ("ip-adapter_sd15", unets.comfy_sdxl_model(), "SDXL")):
        adapter = _load(model_dirs, variant)
        (prompt,) = run_node("EncodeImagePrompt", ip_adapter=adapter, clip_vision=clip_h, image=image,
                             fit="center crop")
        with pytest.raises(ValueError, match=rf"ApplyIPAdapter: .*{variant}.* adapter .*looks like {wrong}"):
            run_node("ApplyIPAdapter", model=model, ip_adapter=adapter, image_prompt=prompt, weight=1.0,
                     start_percent=0.0, end_percent=1.0)


def test_wrong_clip_vision_width_says_which_encoder_to_load(comfy, model_dirs, clip_h) -> None:
    adapter = _load(model_dirs, "ip-adapter_sdxl")  # trained with ViT-bigG/14 image_embeds (1280)
    with pytest.raises(ValueError, match=r"needs the ViT-bigG/14 CLIP vision model.*width 1024.*"
                                         r"CLIP-ViT-bigG-14-laion2B-39B-b160k\.safetensors"):
        run_node("EncodeImagePrompt", ip_adapter=adapter, clip_vision=clip_h, image=torch.rand(1, 64, 64, 3),
                 fit="center crop")


def test_empty_image_batch_names_the_input(comfy, model_dirs, clip_h) -> None:
    adapter = _load(model_dirs, "ip-adapter_sd15")
    with pytest.raises(ValueError, match=r"EncodeImagePrompt: 'image' is an empty image batch"):
        run_node("EncodeImagePrompt", ip_adapter=adapter, clip_vision=clip_h, image=torch.zeros(0, 64, 64, 3),
                 fit="center crop")


@pytest.mark.parametrize("shape", [(1, 1, 1, 3), (1, 40, 300, 4), (2, 50, 50, 1)])
def test_odd_but_valid_images_encode(comfy, model_dirs, clip_h, shape) -> None:
    """1x1 pixels, RGBA, grayscale and very wide images are accepted, not crashed on."""
    adapter = _load(model_dirs, "ip-adapter_sd15")
    for fit in ("center crop", "pad", "stretch"):
        (prompt,) = run_node("EncodeImagePrompt", ip_adapter=adapter, clip_vision=clip_h,
                             image=torch.rand(*shape), fit=fit)
        assert prompt.cond.shape == (1, 4 * shape[0], 768) and torch.isfinite(prompt.cond).all()


def test_start_after_end_is_refused(comfy, model_dirs, clip_h) -> None:
    adapter = _load(model_dirs, "ip-adapter_sd15")
    (prompt,) = run_node("EncodeImagePrompt", ip_adapter=adapter, clip_vision=clip_h,
                         image=torch.rand(1, 64, 64, 3), fit="center crop")
    with pytest.raises(ValueError, match=r"start_percent \(0.8\) is after end_percent \(0.2\)"):
        run_node("ApplyIPAdapter", model=unets.comfy_sd15_model(), ip_adapter=adapter, image_prompt=prompt,
                 weight=1.0, start_percent=0.8, end_percent=0.2)


def test_prompt_from_another_adapter_kind_is_refused(comfy, model_dirs, clip_h) -> None:
    base, plus = _load(model_dirs, "ip-adapter_sd15"), _load(model_dirs, "ip-adapter-plus_sd15")
    (prompt,) = run_node("EncodeImagePrompt", ip_adapter=base, clip_vision=clip_h,
                         image=torch.rand(1, 64, 64, 3), fit="center crop")
    with pytest.raises(ValueError, match=r"encoded for a SD1.5 base .* Encode with the same adapter"):
        run_node("ApplyIPAdapter", model=unets.comfy_sd15_model(), ip_adapter=plus, image_prompt=prompt,
                 weight=1.0, start_percent=0.0, end_percent=1.0)
