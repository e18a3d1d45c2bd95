"""Node registration, schemas, the ipadapter model folder, and the real CLIPVisionLoader path."""

from __future__ import annotations

import pytest
import torch
from support import checkpoints
from support.clip_vision_files import write_clip_vision_vit_h
from support.comfy_harness import run_node

NODE_IDS = ("LoadIPAdapter", "EncodeImagePrompt", "ApplyIPAdapter")


def test_nodes_register_with_tooltips_and_distinct_types(pack) -> None:
    for node_id in NODE_IDS:
        assert node_id in pack
        schema = pack.node(node_id).GET_SCHEMA()
        for item in schema.inputs:
            assert item.tooltip, f"{node_id}.{item.id} has no tooltip"
        types = {getattr(item, "io_type", None) for item in schema.inputs + schema.outputs}
        assert "IPADAPTER" not in types  # another pack's type name: links would validate, then fail


def test_weight_and_window_ranges(pack) -> None:
    inputs = {item.id: item for item in pack.node("ApplyIPAdapter").GET_SCHEMA().inputs}
    assert inputs["weight"].min <= -1.0 and inputs["weight"].max >= 3.0 and inputs["weight"].default == 1.0
    for name in ("start_percent", "end_percent"):
        assert (inputs[name].min, inputs[name].max) == (0.0, 1.0)


def test_adapter_files_are_listed_from_the_model_folder(comfy, model_dirs) -> None:
    for suffix in ("safetensors", "bin"):
        sd = checkpoints.ip_adapter_state_dict("ip-adapter_sd15")
        (checkpoints.save_safetensors if suffix == "safetensors" else checkpoints.save_bin)(
            sd, model_dirs["ipadapter"] / f"listed.{suffix}")
    names = comfy.folder_paths.get_filename_list("ipadapter")
    assert {"listed.safetensors", "listed.bin"} <= set(names)
    (adapter,) = run_node("LoadIPAdapter", adapter_name="listed.bin")
    assert adapter.spec.describe().startswith("SD1.5 base")


def test_folder_created_by_extra_model_paths_gets_extensions(comfy, pack, tmp_path) -> None:
    """An extra_model_paths.yaml entry creates the folder with no extensions; files must still list."""
    fp = comfy.folder_paths
    register = pack.module.utils.model_folders.register_model_folder
    fp.add_model_folder_path("ipadapter_yaml_test", str(tmp_path))  # what the yaml loader does
    assert fp.folder_names_and_paths["ipadapter_yaml_test"][1] == set()
    (tmp_path / "a.safetensors").write_bytes(b"x")
    register(fp, "ipadapter_yaml_test")
    try:
        assert fp.get_filename_list("ipadapter_yaml_test") == ["a.safetensors"]
        assert str(tmp_path) in fp.get_folder_paths("ipadapter_yaml_test")
    finally:
        del fp.folder_names_and_paths["ipadapter_yaml_test"]


@pytest.mark.slow
def test_clip_vision_loader_file_encodes_with_the_authors_uncond(comfy, model_dirs) -> None:
    """ComfyUI's CLIPVisionLoader on a full-shape ViT-H/14 file (random weights, HF layout).

    The plus adapter's uncond tokens are the projection of the encoding of zero
    *normalised* pixels, which differs from the encoding of a black image.
    """
    write_clip_vision_vit_h(model_dirs["clip_vision"] / "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", seed=3)
    (clip_vision,) = run_node("CLIPVisionLoader", clip_name="CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors")
    path = checkpoints.save_safetensors(checkpoints.ip_adapter_state_dict("ip-adapter-plus_sd15", "small"),
                                        model_dirs["ipadapter"] / "plus.safetensors")
    (adapter,) = run_node("LoadIPAdapter", adapter_name=path.name)
    images = torch.rand(2, 224, 224, 3, generator=torch.Generator().manual_seed(0))
    (prompt,) = run_node("EncodeImagePrompt", ip_adapter=adapter, clip_vision=clip_vision, image=images,
                         fit="center crop")
    assert prompt.cond.shape == prompt.uncond.shape == (1, 32, 768)  # two images, 16 tokens each
    with torch.inference_mode():
        zeros = torch.zeros(1, 3, 224, 224)
        expected = adapter.model.project(clip_vision.model(pixel_values=zeros, intermediate_output=-2)[1].float())
        black = adapter.model.project(clip_vision.encode_image(torch.zeros(1, 224, 224, 3))["penultimate_hidden_states"])
    torch.testing.assert_close(prompt.uncond[:, :16], expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(prompt.uncond[:, 16:], expected, rtol=0, atol=1e-5)
    assert (black - expected).abs().max() > 1e-2
    assert (prompt.cond[:, :16] - prompt.cond[:, 16:]).abs().max() > 1e-3  # the two images differ
