"""SD3.5 adapters meet the wrong model, encoder or options: clear errors naming what to fix."""

from __future__ import annotations

import pytest
import torch
from sd35_case import build
from support import sd3_models, unets
from support.comfy_clip import tiny_comfy_clip_vision
from support.comfy_harness import run_node


@pytest.fixture(scope="module")
def case(comfy, tmp_path_factory):
    import folder_paths

    folder = tmp_path_factory.mktemp("sd35_bad")
    (folder / "ipadapter").mkdir()
    folder_paths.add_model_folder_path("ipadapter", str(folder / "ipadapter"), is_default=True)
    folder_paths.filename_list_cache.pop("ipadapter", None)
    return build({"ipadapter": folder / "ipadapter"}, folder, name="sd35-bad.safetensors")


def _error(call, *words: str) -> str:
    with pytest.raises(Exception) as info:  # noqa: PT011 (the pack's ImagePromptError, loaded under ComfyUI's module name)
        call()
    assert type(info.value).__name__ == "ImagePromptError", info.value
    message = str(info.value)
    for word in words:
        assert word in message, message
    return message


@pytest.mark.parametrize("other", ["sdxl", "flux"])
def test_sd35_adapter_on_another_model(case, other) -> None:
    model = unets.comfy_sdxl_model() if other == "sdxl" else sd3_models.tiny_comfy_flux()
    prompt = case.encode()
    _error(lambda: case.apply(prompt, model=model), "SD3.5", "Flux" if other == "flux" else "UNet")


def test_sd35_adapter_on_a_narrower_mmdit(case) -> None:
    small = sd3_models.comfy_sd3_model(sd3_models.diffusers_sd3(depth=2, seed=4))
    _error(lambda: case.apply(case.encode(), model=small), "joint blocks", "2 blocks")


def test_clip_h_instead_of_siglip(case, tmp_path) -> None:
    clip_h = tiny_comfy_clip_vision(tmp_path, hidden=1280, projection_dim=1024)
    _error(lambda: run_node("EncodeImagePrompt", ip_adapter=case.adapter, clip_vision=clip_h, image=case.image,
                            fit="center crop"), "SigLIP", "sigclip_vision_patch14_384.safetensors", "1280")


@pytest.mark.parametrize("weight_type", ["style transfer", "ease in", "weak input"])
def test_unet_weight_types_refused(case, weight_type) -> None:
    _error(lambda: case.apply(case.encode(), weight_type=weight_type), weight_type, "linear", "layer_weights")


def test_wrong_layer_weights_count_and_scaling(case) -> None:
    _error(lambda: case.apply(case.encode(), layer_weights="1, 1"), "3 joint blocks")
    _error(lambda: case.apply(case.encode(), embeds_scaling="K+V"), "K+V", "V only")


def test_unet_prompt_on_sd35_adapter_and_back(case, tmp_path) -> None:
    from safetensors.torch import save_file
    from support import checkpoints

    path = next(iter(case.adapter_dir.glob("*.safetensors"))).parent / "unet-plus.safetensors"
    save_file(checkpoints.ip_adapter_state_dict("ip-adapter-plus_sd15", "small", seed=1), str(path))
    (unet_adapter,) = run_node("LoadIPAdapter", adapter_name=path.name)
    clip_h = tiny_comfy_clip_vision(tmp_path, hidden=1280, projection_dim=1024)
    (unet_prompt,) = run_node("EncodeImagePrompt", ip_adapter=unet_adapter, clip_vision=clip_h, image=case.image,
                              fit="center crop")
    _error(lambda: case.apply(unet_prompt), "encoded for", "Encode with the same adapter")
    _error(lambda: case.apply(case.encode(), model=unets.comfy_sd15_model(), adapter=unet_adapter),
           "SD3.5", "same adapter")


def test_damaged_sd35_file_is_named(case) -> None:
    from safetensors.torch import save_file

    sd = dict(case.adapter_sd)
    del sd["ip_adapter.1.norm_ip_k.weight"]
    path = case.adapter_dir / "sd35-damaged.safetensors"
    save_file(sd, str(path))
    with pytest.raises(Exception) as info:  # noqa: PT011
        run_node("LoadIPAdapter", adapter_name=path.name)
    assert "ip_adapter.1.norm_ip_k.weight" in str(info.value) and "sd35-damaged" in str(info.value)
    assert torch.isfinite(case.x).all()


# ---- issue 16's options that SD3.5's joint-block patch does not have yet: refused by name, never ignored ----

@pytest.mark.parametrize("schedule", ["linear", "ease in-out", "per step list"])
def test_weight_schedule_refused(case, schedule) -> None:
    _error(lambda: case.apply(case.encode(), weight_schedule=schedule, end_weight=0.2, step_weights="1, 0.5"),
           f"weight_schedule '{schedule}'", "SD3.5", "'constant'")


def test_constant_schedule_and_empty_latent_weights_pass(case) -> None:
    # the defaults, written out as a saved workflow carries them, are not refused
    assert case.apply(case.encode(), weight_schedule="constant", end_weight=1.0, step_weights="", latent_weights="")


@pytest.mark.parametrize("inputs", [{"latent_weights": "1, 0.5"}, {"latent_weights": " 0.8 "},
                                    {"latent_weights_list": [1.0, 0.5]}, {"latent_weights_list": 0.7}])
def test_latent_weights_refused(case, inputs) -> None:
    _error(lambda: case.apply(case.encode(), **inputs), "per-latent weights", "SD3.5", "latent_weights")


def test_region_chain_refused(case, pack) -> None:
    import importlib

    regions = importlib.import_module(f"{pack.module.__name__}.ip_adapter.regions")
    chain = regions.RegionalPrompt((regions.Region(prompt=case.encode(), weight=0.8, mask=torch.ones(1, 16, 16)),))
    _error(lambda: case.apply(chain), "IP-Adapter Region", "SD3.5", "attn_mask")
    # the node itself says that regions are not there yet for SD3.5 and what to do instead
    _error(lambda: run_node("IPAdapterRegion", image_prompt=case.encode(), mask=torch.ones(1, 16, 16), weight=1.0),
           "IPAdapterRegion", "not available for SD3.5", "attn_mask")


def test_fit_tiled_refused(case) -> None:
    assert case.image.shape[1] != case.image.shape[2]  # a non-square reference: more than one tile
    _error(lambda: run_node("EncodeImagePrompt", ip_adapter=case.adapter, clip_vision=case.siglip, image=case.image,
                            fit="tiled"), "fit 'tiled'", "SD3.5", "'pad'")


def test_one_per_latent_refused(case) -> None:
    two = torch.cat([case.image, case.image.flip(2)])
    _error(lambda: case.encode(two, combine_embeds="one per latent"), "'one per latent'", "SD3.5", "'concat'")
