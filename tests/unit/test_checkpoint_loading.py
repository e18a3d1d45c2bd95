"""Reading both published layouts and detecting every variant from keys and shapes."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from ipadapter_pack.ip_adapter.errors import AdapterFormatError
from ipadapter_pack.ip_adapter.model import IPAdapterModel
from ipadapter_pack.ip_adapter.state_dict import detect_spec, read_file
from support import checkpoints

BASES = {"sd15": "SD1.5", "sdxl": "SDXL"}


@pytest.mark.parametrize("variant", checkpoints.VARIANTS)
def test_detects_every_published_variant_from_shapes(variant: str) -> None:
    facts = checkpoints.expected(variant, "full")
    shapes = checkpoints.state_dict_shapes(variant, "full")
    meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    spec = detect_spec(meta, variant)
    assert spec.base.value == BASES[facts["base"]]
    assert spec.projection.value == facts["projection"]
    assert spec.feature.value == facts["feature"]
    assert spec.clip_dim == facts["clip_dim"]
    assert spec.encoder == facts["encoder"]
    assert spec.tokens == facts["tokens"]
    assert spec.cross_attention_dim == facts["cross_attention_dim"]
    assert spec.layer_count == facts["layer_count"]
    assert spec.layer_indices == facts["layer_indices"]
    assert spec.layer_widths == facts["layer_widths"]


def test_base_sd15_has_the_papers_22m_parameters(tmp_path) -> None:
    sd = checkpoints.ip_adapter_state_dict("ip-adapter_sd15", "full")
    model = IPAdapterModel.from_state_dict(sd, "ip-adapter_sd15.safetensors")
    assert sum(p.numel() for p in model.parameters()) == 22_319_616


@pytest.mark.parametrize("variant", ["ip-adapter_sd15", "ip-adapter-plus_sdxl_vit-h", "ip-adapter-full-face_sd15"])
@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_both_layouts_load_the_same_weights(tmp_path, variant: str, fmt: str) -> None:
    sd = checkpoints.ip_adapter_state_dict(variant, "small", seed=3)
    path = tmp_path / f"{variant}.{fmt}"
    (checkpoints.save_safetensors if fmt == "safetensors" else checkpoints.save_bin)(sd, path)
    model = IPAdapterModel.from_file(path)
    loaded = model.state_dict()
    assert set(loaded) == set(sd)
    for key, tensor in sd.items():
        assert torch.equal(loaded[key], tensor), key


def test_file_name_does_not_decide_the_variant(tmp_path) -> None:
    sd = checkpoints.ip_adapter_state_dict("ip-adapter-plus_sd15", "small")
    path = checkpoints.save_safetensors(sd, tmp_path / "ip-adapter_sdxl.safetensors")
    spec = IPAdapterModel.from_file(path).spec
    assert (spec.base.value, spec.variant) == ("SD1.5", "plus")


def test_truncated_file_names_the_file(tmp_path) -> None:
    path = checkpoints.write_truncated_safetensors(tmp_path / "half.safetensors")
    with pytest.raises(AdapterFormatError, match=r"half\.safetensors.*download it again"):
        read_file(path)


def test_missing_file_names_the_path(tmp_path) -> None:
    with pytest.raises(AdapterFormatError, match="not found"):
        read_file(tmp_path / "nope.safetensors")


class _Payload:
    """Unpickling this calls os.system; a safe loader must never get that far."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_is_refused_and_never_runs(tmp_path) -> None:
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.bin"
    with open(path, "wb") as f:
        pickle.dump({"image_proj": {"proj.weight": _Payload(str(marker))}}, f)
    with pytest.raises(AdapterFormatError, match=r"Refused to load 'evil\.bin'.*safetensors"):
        read_file(path)
    assert not marker.exists()


def test_unknown_key_is_named() -> None:
    sd = checkpoints.state_dict_with_unknown_key("ip-adapter_sd15")
    with pytest.raises(AdapterFormatError, match=r"image_proj\.unexpected_extra\.weight"):
        IPAdapterModel.from_state_dict(sd, "x.safetensors")


def test_missing_layer_key_is_named() -> None:
    sd, key = checkpoints.state_dict_missing_key("ip-adapter_sd15")
    with pytest.raises(AdapterFormatError, match=key.replace(".weight", "")):
        IPAdapterModel.from_state_dict(sd, "x.safetensors")


def test_missing_projection_key_is_named() -> None:
    sd, _key = checkpoints.state_dict_missing_key("ip-adapter-plus_sd15", key="image_proj.layers.2.0.to_kv.weight")
    with pytest.raises(AdapterFormatError, match=r"missing keys image_proj\.layers\.2\.0\.to_kv\.weight"):
        IPAdapterModel.from_state_dict(sd, "x.safetensors")


def test_faceid_lora_keys_are_rejected_by_name() -> None:
    sd = checkpoints.ip_adapter_state_dict("ip-adapter_sd15")
    sd["ip_adapter.1.to_q_lora.down.weight"] = torch.zeros(4, 4)
    with pytest.raises(AdapterFormatError, match=r"ip_adapter\.1\.to_q_lora\.down\.weight.*FaceID"):
        IPAdapterModel.from_state_dict(sd, "faceid.bin")


def test_wrong_layer_count_is_explained() -> None:
    sd = checkpoints.ip_adapter_state_dict("ip-adapter_sd15")
    for key in [k for k in sd if k.startswith("ip_adapter.31.")]:
        del sd[key]
    with pytest.raises(AdapterFormatError, match="15 ip_adapter layers; SD1.5 adapters have 16"):
        IPAdapterModel.from_state_dict(sd, "x.safetensors")


def test_non_finite_weights_are_refused_at_first_use() -> None:
    sd = checkpoints.ip_adapter_state_dict("ip-adapter_sd15")
    sd["ip_adapter.5.to_k_ip.weight"][0, 0] = float("nan")
    model = IPAdapterModel.from_state_dict(sd, "x.safetensors")  # checked where the weights are when used
    with pytest.raises(AdapterFormatError, match=r"'x\.safetensors' has NaN.*ip_adapter\.5\.to_k_ip\.weight"):
        model.project(torch.zeros(1, 1024))


def test_a_full_model_is_not_mistaken_for_an_adapter() -> None:
    with pytest.raises(AdapterFormatError, match="outside image_proj"):
        detect_spec({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, "sd15.safetensors")
