"""LoadIPAdapterAndCLIPVision in a real ComfyUI: the encoder found by content, or a message that says what to get.

The CLIP vision files have the real published header shapes (support.model_headers) under
names and subfolders that say nothing; ComfyUI's own `comfy.clip_vision.load` loads the one
chosen. LoadIPAdapter + CLIPVisionLoader are untouched (test_loader_and_schema.py).
"""

from __future__ import annotations

import pytest
from support import checkpoints
from support import model_headers as mh
from support.comfy_harness import run_node

NODE = "LoadIPAdapterAndCLIPVision"


def test_node_is_registered_with_the_extensions_probe_cache(pack) -> None:
    cls = pack.node(NODE)
    assert type(cls.probes).__name__ == "ProbeCache"
    schema = cls.GET_SCHEMA()
    assert [o.io_type for o in schema.outputs] == ["IP_ADAPTER_CHECKPOINT", "CLIP_VISION"]
    assert "IP-Adapter" in schema.display_name


def test_no_fitting_encoder_lists_what_was_seen_and_what_to_download(comfy, model_dirs) -> None:
    mh.write_tower(model_dirs["clip_vision"] / "vision" / "model.safetensors", "ViT-L/14")
    (model_dirs["clip_vision"] / "broken.safetensors").write_bytes(b"\x00" * 4)
    (model_dirs["ipadapter"] / "mine").mkdir()
    checkpoints.save_safetensors(checkpoints.ip_adapter_state_dict("ip-adapter_sdxl", "small"),
                                 model_dirs["ipadapter"] / "mine" / "style.safetensors")
    with pytest.raises(Exception) as caught:
        run_node(NODE, adapter_name="mine/style.safetensors")
    message = str(caught.value)
    assert "it needs ViT-bigG/14" in message
    assert "clip_vision/vision/model.safetensors: CLIP vision ViT-L/14" in message
    assert "clip_vision/broken.safetensors: unreadable" in message
    assert "h94/IP-Adapter 'sdxl_models/image_encoder/model.safetensors'" in message
    assert "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors' into models/clip_vision/" in message


@pytest.mark.slow
def test_renamed_encoder_in_a_subfolder_is_found_and_loaded(comfy, model_dirs) -> None:
    mh.write_tower(model_dirs["clip_vision"] / "a" / "not-the-h-one.safetensors", "ViT-L/14")
    mh.write_tower(model_dirs["clip_vision"] / "z" / "image_encoder" / "model.safetensors", "ViT-H/14")
    checkpoints.save_safetensors(checkpoints.ip_adapter_state_dict("ip-adapter-plus_sd15", "small"),
                                 model_dirs["ipadapter"] / "renamed.safetensors")
    adapter, clip_vision = run_node(NODE, adapter_name="renamed.safetensors")
    assert adapter.spec.describe().startswith("SD1.5 plus")
    layers = clip_vision.model.vision_model.encoder.layers
    assert len(layers) == 32 and layers[0].layer_norm1.weight.shape == (1280,)  # ViT-H/14, not the ViT-L file


def test_sd35_adapter_without_siglip_names_comfy_orgs_file(comfy, model_dirs) -> None:
    from support.sd3_models import sd35_adapter_state_dict

    mh.write_tower(model_dirs["clip_vision"] / "vision" / "model.safetensors", "ViT-L/14")
    sd = sd35_adapter_state_dict(38, 64, clip_dim=1152, dim=64, heads=1, tokens=64, depth=4, timestep_dim=32)
    checkpoints.save_bin(sd, model_dirs["ipadapter"] / "sd35.bin")
    with pytest.raises(Exception) as caught:
        run_node(NODE, adapter_name="sd35.bin")
    message = str(caught.value)
    assert "it needs SigLIP so400m-patch14-384" in message
    assert "clip_vision/vision/model.safetensors: CLIP vision ViT-L/14" in message
    assert "Comfy-Org/sigclip_vision_384 'sigclip_vision_patch14_384.safetensors'" in message


@pytest.mark.slow
def test_xlabs_flux_adapter_is_loaded_with_the_vit_l_file_found_by_content(comfy, model_dirs) -> None:
    from support.flux_models import save, xlabs_state_dict

    mh.write_tower(model_dirs["clip_vision"] / "a" / "model.safetensors", "ViT-H/14")
    mh.write_tower(model_dirs["clip_vision"] / "b" / "renamed.safetensors", "ViT-L/14")
    save(xlabs_state_dict(16, width=32), model_dirs["ipadapter"] / "flux.safetensors")
    adapter, clip_vision = run_node(NODE, adapter_name="flux.safetensors")
    assert adapter.spec.describe().startswith("Flux XLabs v2")
    layers = clip_vision.model.vision_model.encoder.layers
    assert len(layers) == 24 and layers[0].layer_norm1.weight.shape == (1024,)  # ViT-L/14, not the ViT-H file
