"""The model check: files recognised by header shapes, paired, and what is missing named with its source.

Files are full-size in their headers (the published keys and shapes; data mostly a sparse
hole, see support.model_headers), under renamed names, in subfolders and in an
`extra_model_paths.yaml` folder.
"""

from __future__ import annotations

import json
import os

import pytest
from ipadapter_pack.ip_adapter import models as check
from ipadapter_pack.ip_adapter.folders import comfy_model_folders
from ipadapter_pack.ip_adapter.probe import ProbeCache, probe_file, read_shapes
from ipadapter_pack.ip_adapter.published import ADAPTERS, ENCODERS, published
from support import checkpoints
from support import model_headers as mh
from support.clip_vision_files import VIT_H_CONFIG, clip_vision_shapes


@pytest.mark.parametrize("variant", checkpoints.VARIANTS)
def test_every_published_adapter_is_recognised_from_its_header(tmp_path, variant: str) -> None:
    path = mh.write_adapter_header(tmp_path / "renamed.safetensors", variant)
    probe = probe_file(path)
    facts = checkpoints.expected(variant, "full")
    assert probe.kind == "adapter", probe.what
    assert probe.spec is not None and probe.spec.encoder == facts["encoder"]
    assert os.path.getsize(path) > 20_000_000  # the real size, not a toy


@pytest.mark.parametrize(("tower", "layout"), [("ViT-H/14", "hf"), ("ViT-H/14", "openclip"),
                                               ("ViT-bigG/14", "hf"), ("ViT-L/14", "hf")])
def test_clip_vision_towers_are_recognised_in_both_layouts(tmp_path, tower: str, layout: str) -> None:
    path = mh.write_tower(tmp_path / "model.safetensors", tower, layout)
    assert read_shapes(path) == clip_vision_shapes(mh.TOWERS[tower], layout)
    probe = probe_file(path)
    assert (probe.kind, probe.encoder) == ("encoder", tower), probe.what


def test_bin_adapter_is_read_without_running_code(tmp_path) -> None:
    path = checkpoints.save_bin(checkpoints.ip_adapter_state_dict("ip-adapter_sd15_light_v11", "small"),
                                tmp_path / "light.bin")
    probe = probe_file(path)
    assert probe.kind == "adapter" and probe.spec is not None and probe.spec.encoder == "ViT-H/14"


@pytest.mark.parametrize(("content", "reason"), [(b"hello", "shorter than a safetensors header"),
                                                  (b"\xff" * 64, "does not fit"),
                                                  (b"\x05\x00\x00\x00\x00\x00\x00\x00notjs", "not JSON")])
def test_bad_files_are_reported_not_raised(tmp_path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    probe = probe_file(path)
    assert probe.kind == "unreadable" and reason in probe.what


def test_truncated_file_is_named_as_truncated(tmp_path) -> None:
    path = mh.write_tower(tmp_path / "cut.safetensors", "ViT-H/14")
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) - 10)
    assert "truncated" in probe_file(path).what


def test_cache_reads_each_file_version_once(tmp_path) -> None:
    path = mh.write_tower(tmp_path / "h.safetensors", "ViT-H/14")
    cache = ProbeCache()
    first = cache.probe(path)
    assert cache.probe(path) is first and cache.reads == 1
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    cache.probe(path)
    assert cache.reads == 2


def _comfy_tree(root):
    """Renamed and sub-foldered files, one adapter in an extra_model_paths.yaml folder, one misplaced."""
    models = root / "models"
    mh.write_tower(models / "clip_vision" / "sd15" / "model.safetensors", "ViT-H/14")
    mh.write_tower(models / "clip_vision" / "flux" / "vit-l.safetensors", "ViT-L/14")
    mh.write_adapter_header(models / "ipadapter" / "my faves" / "face thing.safetensors", "ip-adapter-plus-face_sd15")
    mh.write_adapter_header(models / "ipadapter" / "xl.safetensors", "ip-adapter_sdxl")
    mh.write_tower(models / "ipadapter" / "oops_encoder.safetensors", "ViT-H/14")
    mh.write_adapter_header(root.parent / "drive" / "ipa" / "base.safetensors", "ip-adapter_sd15")
    (root / "extra_model_paths.yaml").write_text("mine:\n  base_path: ../drive\n  ipadapter: |\n    ipa\n")
    return comfy_model_folders(str(root), (check.ADAPTER_FOLDER, check.ENCODER_FOLDER))


def test_report_pairs_by_content_and_names_what_is_missing(tmp_path) -> None:
    folders = _comfy_tree(tmp_path / "ComfyUI")
    assert folders["ipadapter"][1] == str(tmp_path / "drive" / "ipa")
    data = check.build_report(folders).as_dict()
    by_file = {a["file"]: a for a in data["adapters"]}
    assert by_file["ipadapter/my faves/face thing.safetensors"]["encoders"] == ["clip_vision/sd15/model.safetensors"]
    assert by_file["ipadapter/base.safetensors"]["ready"]
    assert not by_file["ipadapter/xl.safetensors"]["ready"]
    assert by_file["ipadapter/xl.safetensors"]["needs"] == "ViT-bigG/14"
    assert data["ready"] == 2
    bigg = ENCODERS["ViT-bigG/14"]
    assert data["missing"] == [{"name": "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors", "repo": "h94/IP-Adapter",
                                "path": "sdxl_models/image_encoder/model.safetensors", "url": bigg.url,
                                "folder": "clip_vision", "rename": True}]
    hints = {o["file"]: o["hint"] for o in data["other_files"]}
    assert "move it to models/clip_vision/" in hints["ipadapter/oops_encoder.safetensors"]
    mh.write_tower(tmp_path / "ComfyUI" / "models" / "ipadapter" / "bigG.safetensors", "ViT-bigG/14")
    moved = check.build_report(folders).as_dict()
    xl = next(a for a in moved["adapters"] if a["file"] == "ipadapter/xl.safetensors")
    assert xl["misplaced_encoders"] == ["ipadapter/bigG.safetensors"] and moved["missing"] == []
    json.dumps(data)  # the HTTP route sends it as is


def test_no_encoder_message_lists_each_file_and_the_download(tmp_path) -> None:
    folders = _comfy_tree(tmp_path / "ComfyUI")
    cache = ProbeCache()
    adapter = cache.probe(tmp_path / "ComfyUI" / "models" / "ipadapter" / "xl.safetensors")
    looked_at = [cache.probe(p) for _, p in check.list_model_files({"clip_vision": folders["clip_vision"]})]
    assert check.pick_encoder(adapter, looked_at) == []
    message = check.no_encoder_message(adapter, looked_at, folders)
    assert "it needs ViT-bigG/14" in message
    assert "clip_vision/flux/vit-l.safetensors: CLIP vision ViT-L/14" in message
    assert "clip_vision/sd15/model.safetensors: CLIP vision ViT-H/14" in message
    assert "sdxl_models/image_encoder/model.safetensors" in message
    assert "saved as 'CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors' into models/clip_vision/" in message


def test_empty_folders_ask_for_the_starter_pair(tmp_path, capsys) -> None:
    assert check.main(["--ipadapter", str(tmp_path), "--clip-vision", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "ipadapter/ip-adapter_sd15.safetensors" in out and "from h94/IP-Adapter: models/ip-adapter_sd15" in out
    assert "clip_vision/CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors" in out


def test_command_refuses_a_folder_that_is_not_comfyui(tmp_path, capsys) -> None:
    assert check.main(["--comfyui", str(tmp_path)]) == 2
    assert "not a ComfyUI folder" in capsys.readouterr().err


def test_published_table_urls() -> None:
    assert ADAPTERS["ip-adapter_sdxl.safetensors"].url == (
        "https://huggingface.co/h94/IP-Adapter/resolve/main/sdxl_models/ip-adapter_sdxl.safetensors")
    assert ENCODERS["ViT-H/14"].url == (
        "https://huggingface.co/h94/IP-Adapter/resolve/main/models/image_encoder/model.safetensors")
    assert published("CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors") is ENCODERS["ViT-H/14"]
    assert VIT_H_CONFIG["projection_dim"] == 1024


def test_registering_a_model_folder_creates_it(tmp_path) -> None:
    """What ComfyUI's folder_paths offers, as a namespace: the pack's folder exists after loading."""
    from types import SimpleNamespace

    from ipadapter_pack.utils.model_folders import register_model_folder

    table: dict[str, tuple[list[str], set[str]]] = {}
    fake = SimpleNamespace(models_dir=str(tmp_path / "models"), folder_names_and_paths=table,
                           add_model_folder_path=lambda name, path: table.setdefault(name, ([], set()))[0].append(path))
    register_model_folder(fake, "ipadapter")
    assert (tmp_path / "models" / "ipadapter").is_dir()
    assert ".safetensors" in table["ipadapter"][1]


# --- Flux (XLabs) and SD3.5 (InstantX): recognised by content, paired with ViT-L/14 and SigLIP-384 ---

def _siglip_384_shapes() -> dict[str, tuple[int, ...]]:
    """The vision tower of SigLIP so400m-patch14-384 (Comfy-Org's sigclip_vision_patch14_384.safetensors layout):
    1152 wide, 27 layers, MLP 4304, 27 x 27 = 729 positions, no class token, an attention-pooling head."""
    d, ff, e = 1152, 4304, "vision_model."
    shapes: dict[str, tuple[int, ...]] = {e + "embeddings.patch_embedding.weight": (d, 3, 14, 14),
                                          e + "embeddings.patch_embedding.bias": (d,),
                                          e + "embeddings.position_embedding.weight": (729, d)}
    for i in range(27):
        p = f"{e}encoder.layers.{i}."
        for n in ("layer_norm1", "layer_norm2"):
            shapes[p + n + ".weight"] = shapes[p + n + ".bias"] = (d,)
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[p + f"self_attn.{n}.weight"], shapes[p + f"self_attn.{n}.bias"] = (d, d), (d,)
        shapes[p + "mlp.fc1.weight"], shapes[p + "mlp.fc1.bias"] = (ff, d), (ff,)
        shapes[p + "mlp.fc2.weight"], shapes[p + "mlp.fc2.bias"] = (d, ff), (d,)
    shapes.update({e + "post_layernorm.weight": (d,), e + "post_layernorm.bias": (d,), e + "head.probe": (1, 1, d),
                   e + "head.attention.in_proj_weight": (3 * d, d), e + "head.attention.in_proj_bias": (3 * d,),
                   e + "head.attention.out_proj.weight": (d, d), e + "head.attention.out_proj.bias": (d,)})
    return shapes


def _openai_clip_l_with_text(path):
    """OpenAI's clip-vit-large-patch14 model.safetensors: the ViT-L/14 vision tower plus the text tower."""
    from support.clip_vision_files import clip_vision_shapes

    shapes = clip_vision_shapes(mh.TOWERS["ViT-L/14"], "hf")
    shapes.update({f"text_model.encoder.layers.{i}.layer_norm1.weight": (768,) for i in range(12)})
    shapes.update({"text_model.embeddings.token_embedding.weight": (49408, 768), "text_projection.weight": (768, 768),
                   "logit_scale": ()})
    return mh.write_shapes(path, shapes)


def _instantx_flux_shapes() -> dict[str, tuple[int, ...]]:
    shapes = {"image_proj.proj.0.weight": (2304, 1152), "image_proj.proj.0.bias": (2304,),
              "image_proj.proj.2.weight": (128 * 4096, 2304), "image_proj.proj.2.bias": (128 * 4096,),
              "image_proj.norm.weight": (4096,), "image_proj.norm.bias": (4096,)}
    shapes.update({f"ip_adapter.{i}.to_{kv}_ip.weight": (3072, 4096) for i in range(57) for kv in "kv"})
    return shapes


@pytest.mark.parametrize(("tokens", "variant"), [(4, "XLabs v1"), (16, "XLabs v2")])
def test_xlabs_flux_adapters_are_recognised_and_need_vit_l(tmp_path, tokens: int, variant: str) -> None:
    from support.flux_models import xlabs_shapes

    probe = probe_file(mh.write_shapes(tmp_path / "whatever.safetensors", xlabs_shapes(tokens)))
    assert probe.kind == "adapter", probe.what
    assert probe.spec is not None and probe.spec.variant == variant and probe.spec.tokens == tokens
    assert probe.spec.encoder == "ViT-L/14" and probe.what.startswith(f"IP-Adapter Flux {variant}")


def test_instantx_sd35_adapter_is_recognised_from_its_bin_and_needs_siglip_384(tmp_path) -> None:
    from support.sd3_models import sd35_adapter_state_dict

    sd = sd35_adapter_state_dict(38, 64, clip_dim=1152, dim=64, heads=1, tokens=64, depth=4, timestep_dim=32)
    path = checkpoints.save_bin(sd, tmp_path / "ip-adapter.bin")  # nested, as the release's pickle
    probe = probe_file(path)
    assert probe.kind == "adapter", probe.what
    assert probe.spec is not None and probe.spec.base.value == "SD3.5" and probe.spec.layer_count == 38
    assert probe.spec.encoder == "SigLIP so400m-patch14-384"


def test_siglip_and_openai_clip_files_are_named_as_the_adapters_need_them(tmp_path) -> None:
    siglip = probe_file(mh.write_shapes(tmp_path / "sigclip.safetensors", _siglip_384_shapes()))
    assert (siglip.kind, siglip.encoder) == ("encoder", "SigLIP so400m-patch14-384"), siglip.what
    clip_l = probe_file(_openai_clip_l_with_text(tmp_path / "model.safetensors"))
    assert (clip_l.kind, clip_l.encoder) == ("encoder", "ViT-L/14"), clip_l.what


def test_instantx_flux_is_recognised_and_reported_as_unsupported(tmp_path) -> None:
    probe = probe_file(mh.write_shapes(tmp_path / "ip-adapter.safetensors", _instantx_flux_shapes()))
    assert probe.kind == "other" and probe.spec is None
    assert "cannot use" in probe.what and "InstantX's FLUX.1-dev-IP-Adapter" in probe.what
    assert "not supported" in probe.what and "XLabs' flux-ip-adapter" in probe.what


def test_flux_and_sd35_adapters_pair_by_content_and_name_their_downloads(tmp_path) -> None:
    from support.flux_models import xlabs_shapes
    from support.sd3_models import sd35_adapter_shapes

    ipa, vision = tmp_path / "ipadapter", tmp_path / "clip_vision"
    mh.write_shapes(ipa / "flux" / "v2.safetensors", xlabs_shapes(16))
    mh.write_shapes(ipa / "sd35.safetensors", sd35_adapter_shapes(38, 2432))
    mh.write_shapes(ipa / "instantx-flux.safetensors", _instantx_flux_shapes())
    mh.write_tower(vision / "h.safetensors", "ViT-H/14")
    folders = {"ipadapter": [str(ipa)], "clip_vision": [str(vision)]}
    data = check.build_report(folders).as_dict()
    by_file = {a["file"]: a for a in data["adapters"]}
    assert set(by_file) == {"ipadapter/flux/v2.safetensors", "ipadapter/sd35.safetensors"}
    assert by_file["ipadapter/flux/v2.safetensors"]["needs"] == "ViT-L/14" and data["ready"] == 0
    assert by_file["ipadapter/sd35.safetensors"]["needs"] == "SigLIP so400m-patch14-384"
    assert {m["name"]: m["url"] for m in data["missing"]} == {
        "clip-vit-large-patch14.safetensors":
            "https://huggingface.co/openai/clip-vit-large-patch14/resolve/main/model.safetensors",
        "sigclip_vision_patch14_384.safetensors":
            "https://huggingface.co/Comfy-Org/sigclip_vision_384/resolve/main/sigclip_vision_patch14_384.safetensors"}
    others = {o["file"]: o["what"] for o in data["other_files"]}
    assert "not supported" in others["ipadapter/instantx-flux.safetensors"]

    _openai_clip_l_with_text(vision / "renamed" / "model.safetensors")
    mh.write_shapes(vision / "siglip.safetensors", _siglip_384_shapes())
    paired = {a["file"]: a for a in check.build_report(folders).as_dict()["adapters"]}
    assert paired["ipadapter/flux/v2.safetensors"]["encoders"] == ["clip_vision/renamed/model.safetensors"]
    assert paired["ipadapter/sd35.safetensors"]["encoders"] == ["clip_vision/siglip.safetensors"]


def test_flux_and_sd35_published_sources() -> None:
    assert ADAPTERS["flux-ip-adapter.safetensors"].url == (
        "https://huggingface.co/XLabs-AI/flux-ip-adapter/resolve/main/ip_adapter.safetensors")
    assert ADAPTERS["flux-ip-adapter-v2.safetensors"].renamed
    instantx = ADAPTERS["ip-adapter_sd35_large_instantx.bin"]
    assert instantx.pickle_only and instantx.path == "ip-adapter.bin"
    assert published("flux1-dev.safetensors").gated and "gated" in published("sd3.5_large.safetensors").how_to_get()
    assert ENCODERS["ViT-L/14"].name == "clip-vit-large-patch14.safetensors"
