"""The test-data builders themselves encode the published formats correctly.

Every other test trusts `support.checkpoints` and `support.clip_vision_files`; a
wrong shape here would make the whole suite agree with a bug. Shapes are spelled
out literally from the published checkpoints (not recomputed from the builder), and
no ComfyUI import is needed (ComfyUI's own loader is exercised in integration tests).
"""

from __future__ import annotations

import pytest
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from support import checkpoints as ck
from support import clip_vision_files as cv

# Published shapes, key -> shape, for size="full" (a selection per projection kind).
PUBLISHED = {
    "ip-adapter_sd15": {
        "image_proj.proj.weight": (3072, 1024), "image_proj.proj.bias": (3072,),
        "image_proj.norm.weight": (768,), "ip_adapter.1.to_k_ip.weight": (320, 768),
        "ip_adapter.5.to_v_ip.weight": (640, 768), "ip_adapter.31.to_k_ip.weight": (1280, 768),
    },
    "ip-adapter_sd15_vit-G": {"image_proj.proj.weight": (3072, 1280)},
    "ip-adapter-plus_sd15": {
        "image_proj.latents": (1, 16, 768), "image_proj.proj_in.weight": (768, 1280),
        "image_proj.proj_out.weight": (768, 768), "image_proj.norm_out.bias": (768,),
        "image_proj.layers.3.0.to_q.weight": (768, 768),
        "image_proj.layers.3.0.to_kv.weight": (1536, 768),
        "image_proj.layers.3.0.to_out.weight": (768, 768),
        "image_proj.layers.0.1.0.weight": (768,), "image_proj.layers.0.1.1.weight": (3072, 768),
        "image_proj.layers.0.1.3.weight": (768, 3072),
    },
    "ip-adapter-full-face_sd15": {
        "image_proj.proj.0.weight": (1280, 1280), "image_proj.proj.0.bias": (1280,),
        "image_proj.proj.2.weight": (768, 1280), "image_proj.proj.3.weight": (768,),
    },
    "ip-adapter_sdxl": {
        "image_proj.proj.weight": (8192, 1280), "image_proj.norm.weight": (2048,),
        "ip_adapter.1.to_k_ip.weight": (640, 2048), "ip_adapter.9.to_k_ip.weight": (1280, 2048),
        "ip_adapter.109.to_v_ip.weight": (640, 2048), "ip_adapter.139.to_v_ip.weight": (1280, 2048),
    },
    "ip-adapter_sdxl_vit-h": {"image_proj.proj.weight": (8192, 1024)},
    "ip-adapter-plus_sdxl_vit-h": {
        "image_proj.latents": (1, 16, 1280), "image_proj.proj_in.weight": (1280, 1280),
        "image_proj.proj_out.weight": (2048, 1280), "image_proj.norm_out.weight": (2048,),
        "image_proj.layers.1.0.to_kv.weight": (2560, 1280),
    },
}


@pytest.mark.parametrize("variant", sorted(PUBLISHED))
def test_full_shapes_match_published(variant: str) -> None:
    shapes = ck.state_dict_shapes(variant, "full")
    for key, shape in PUBLISHED[variant].items():
        assert shapes[key] == shape, key


def test_resampler_linears_have_no_bias() -> None:
    keys = ck.state_dict_shapes("ip-adapter-plus_sd15", "full")
    for stem in ("0.to_q", "0.to_kv", "0.to_out", "1.1", "1.3"):
        assert f"image_proj.layers.0.{stem}.weight" in keys
        assert f"image_proj.layers.0.{stem}.bias" not in keys
    assert not any(k.startswith("image_proj.layers.4.") for k in keys)


def test_sd15_base_is_the_papers_22m() -> None:
    assert ck.expected("ip-adapter_sd15")["param_count"] == 22_319_616
    sd = ck.ip_adapter_state_dict("ip-adapter_sd15", "full")
    assert sum(t.numel() for t in sd.values()) == 22_319_616


@pytest.mark.parametrize("variant", ck.VARIANTS)
@pytest.mark.parametrize("size", ck.SIZES)
def test_layer_indices_and_widths(variant: str, size: str) -> None:
    facts = ck.expected(variant, size)
    shapes = ck.state_dict_shapes(variant, size)
    sd15 = facts["base"] == "sd15"
    assert facts["layer_count"] == (16 if sd15 else 70)
    assert facts["layer_indices"] == tuple(range(1, 32 if sd15 else 140, 2))
    scale = 10 if size == "small" else 1
    assert set(facts["layer_widths"]) == {w // scale for w in ((320, 640, 1280) if sd15 else (640, 1280))}
    ctx = facts["cross_attention_dim"]
    assert ctx == (768 if sd15 else 2048)
    for n, width in zip(facts["layer_indices"], facts["layer_widths"]):
        assert shapes[f"ip_adapter.{n}.to_k_ip.weight"] == (width, ctx)
        assert shapes[f"ip_adapter.{n}.to_v_ip.weight"] == (width, ctx)
    assert sum(k.startswith("ip_adapter.") for k in shapes) == 2 * facts["layer_count"]


def test_known_width_tables() -> None:
    sd15 = ck.layer_widths("sd15")
    assert [n for n, w in sd15.items() if w == 320] == [1, 3, 25, 27, 29]
    assert [n for n, w in sd15.items() if w == 640] == [5, 7, 19, 21, 23]
    sdxl = ck.layer_widths("sdxl")
    assert [n for n, w in sdxl.items() if w == 640] == [1, 3, 5, 7, 109, 111, 113, 115, 117, 119]
    assert sum(w == 1280 for w in sdxl.values()) == 60


@pytest.mark.parametrize("variant", ck.VARIANTS)
def test_small_keeps_keys_and_clip_and_context_dims(variant: str) -> None:
    full, small = ck.state_dict_shapes(variant, "full"), ck.state_dict_shapes(variant, "small")
    assert full.keys() == small.keys()
    facts = ck.expected(variant, "small")
    sd = ck.ip_adapter_state_dict(variant, "small", seed=1)
    assert {k: tuple(v.shape) for k, v in sd.items()} == small
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in sd.values())
    if facts["projection"] == "linear":
        assert small["image_proj.proj.weight"] == (4 * facts["cross_attention_dim"], facts["clip_dim"])
    elif facts["projection"] == "resampler":
        assert (facts["resampler_dim"], facts["resampler_heads"]) == (128, 2)
        assert small["image_proj.proj_in.weight"] == (128, 1280)
        assert small["image_proj.proj_out.weight"] == (facts["cross_attention_dim"], 128)
        assert small["image_proj.layers.0.1.1.weight"] == (512, 128)
        assert small["image_proj.layers.0.0.to_q.weight"][0] // 64 == 2  # heads from shape
    else:  # the MLP touches only CLIP and context widths, so it is full-size in both
        assert {k: v for k, v in small.items() if k.startswith("image_proj.")} == {
            k: v for k, v in full.items() if k.startswith("image_proj.")
        }
    assert ck.param_count(variant, "small") < ck.param_count(variant, "full")


@pytest.mark.parametrize(
    "variant,tokens,clip_dim,kind",
    [
        ("ip-adapter_sd15_light", 4, 1024, "linear"),
        ("ip-adapter_sd15_vit-G", 4, 1280, "linear"),
        ("ip-adapter-plus-face_sd15", 16, 1280, "resampler"),
        ("ip-adapter-full-face_sd15", 257, 1280, "mlp"),
        ("ip-adapter_sdxl", 4, 1280, "linear"),
        ("ip-adapter-plus-face_sdxl_vit-h", 16, 1280, "resampler"),
    ],
)
def test_expected_facts(variant: str, tokens: int, clip_dim: int, kind: str) -> None:
    facts = ck.expected(variant)
    assert (facts["tokens"], facts["clip_dim"], facts["projection"]) == (tokens, clip_dim, kind)
    assert facts["feature"] == ("image_embeds" if kind == "linear" else "penultimate_hidden_states")


def test_unknown_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown variant"):
        ck.ip_adapter_state_dict("ip-adapter_sd3")
    with pytest.raises(ValueError, match="unknown size"):
        ck.expected("ip-adapter_sd15", "medium")


def test_weights_are_deterministic_per_key() -> None:
    a = ck.ip_adapter_state_dict("ip-adapter-plus_sd15", seed=4)
    b = ck.ip_adapter_state_dict("ip-adapter-plus_sd15", seed=4)
    c = ck.ip_adapter_state_dict("ip-adapter-plus_sd15", seed=5)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["image_proj.proj_in.weight"], c["image_proj.proj_in.weight"])
    # A key shared by two variants gets the same values: depends on (seed, key) only.
    base = ck.ip_adapter_state_dict("ip-adapter_sd15", seed=4)
    assert torch.equal(base["ip_adapter.7.to_k_ip.weight"], a["ip_adapter.7.to_k_ip.weight"])
    half = ck.ip_adapter_state_dict("ip-adapter_sd15", seed=4, dtype=torch.float16)
    assert half["image_proj.proj.weight"].dtype == torch.float16
    assert torch.equal(half["image_proj.proj.weight"], base["image_proj.proj.weight"].half())


def test_projection_output_is_order_one() -> None:
    """Scaled init: W·e + b for a unit-variance embedding has roughly unit variance."""
    sd = ck.ip_adapter_state_dict("ip-adapter_sd15", "small", seed=0)
    e = torch.randn(8, 1024, generator=torch.Generator().manual_seed(0))
    out = e @ sd["image_proj.proj.weight"].T + sd["image_proj.proj.bias"]
    assert 0.7 < out.std().item() < 1.4
    assert 0.8 < sd["image_proj.norm.weight"].mean().item() < 1.2


def test_safetensors_is_flat(tmp_path) -> None:
    sd = ck.ip_adapter_state_dict("ip-adapter-plus_sd15", seed=2)
    path = ck.save_safetensors(sd, tmp_path / "plus.safetensors")
    loaded = load_file(str(path))
    assert loaded.keys() == sd.keys()
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)


def test_bin_is_nested(tmp_path) -> None:
    sd = ck.ip_adapter_state_dict("ip-adapter_sd15", seed=2)
    path = ck.save_bin(sd, tmp_path / "ip-adapter_sd15.bin")
    loaded = torch.load(str(path), weights_only=True)
    assert set(loaded) == {"image_proj", "ip_adapter"}
    assert set(loaded["image_proj"]) == {"proj.weight", "proj.bias", "norm.weight", "norm.bias"}
    assert "1.to_k_ip.weight" in loaded["ip_adapter"] and "31.to_v_ip.weight" in loaded["ip_adapter"]
    assert torch.equal(loaded["ip_adapter"]["3.to_v_ip.weight"], sd["ip_adapter.3.to_v_ip.weight"])


def test_bad_inputs(tmp_path) -> None:
    path = ck.write_truncated_safetensors(tmp_path / "half.safetensors")
    with pytest.raises(SafetensorError):
        load_file(str(path))
    sd = ck.state_dict_with_unknown_key("ip-adapter_sd15")
    assert "image_proj.unexpected_extra.weight" in sd
    sd, key = ck.state_dict_missing_key("ip-adapter_sd15")
    assert key == "ip_adapter.31.to_v_ip.weight" and key not in sd


# ---- CLIP vision ---------------------------------------------------------------------------


def test_vit_h_shapes_and_count() -> None:
    hf = cv.clip_vision_shapes(cv.VIT_H_CONFIG)
    assert sum(torch.Size(s).numel() for s in hf.values()) == cv.VIT_H_PARAM_COUNT == 632_076_800
    assert hf["vision_model.embeddings.patch_embedding.weight"] == (1280, 3, 14, 14)
    assert hf["vision_model.embeddings.position_embedding.weight"] == (257, 1280)
    assert hf["vision_model.encoder.layers.31.mlp.fc1.weight"] == (5120, 1280)
    assert hf["vision_model.pre_layrnorm.weight"] == (1280,)
    assert hf["visual_projection.weight"] == (1024, 1280)
    assert "vision_model.encoder.layers.32.layer_norm1.weight" not in hf
    oc = cv.clip_vision_shapes(cv.VIT_H_CONFIG, "openclip")
    assert oc["visual.transformer.resblocks.0.attn.in_proj_weight"] == (3840, 1280)
    assert oc["visual.transformer.resblocks.0.attn.in_proj_bias"] == (3840,)
    assert oc["visual.proj"] == (1280, 1024)
    assert oc["visual.conv1.weight"] == (1280, 3, 14, 14)
    assert sum(torch.Size(s).numel() for s in oc.values()) == cv.VIT_H_PARAM_COUNT
    assert all(k.startswith("visual.") for k in oc)


def test_tiny_config_schema() -> None:
    config = cv.tiny_clip_vision_config()
    assert config.keys() == cv.VIT_H_CONFIG.keys()
    assert (config["hidden_size"], config["projection_dim"], config["num_hidden_layers"]) == (1280, 1024, 2)
    with pytest.raises(ValueError):
        cv.tiny_clip_vision_config(layers=1)


def test_openclip_holds_the_same_weights() -> None:
    config = cv.tiny_clip_vision_config(hidden=64, heads=2, intermediate=96)
    hf = cv.tiny_clip_vision_state_dict(config, seed=3)
    oc = cv.openclip_state_dict(config, seed=3)
    assert {k: tuple(v.shape) for k, v in hf.items()} == cv.clip_vision_shapes(config)
    assert {k: tuple(v.shape) for k, v in oc.items()} == cv.clip_vision_shapes(config, "openclip")
    p, r = "vision_model.encoder.layers.1.", "visual.transformer.resblocks.1."
    q, k, v = oc[r + "attn.in_proj_weight"].chunk(3)
    assert torch.equal(q, hf[p + "self_attn.q_proj.weight"])
    assert torch.equal(k, hf[p + "self_attn.k_proj.weight"])
    assert torch.equal(v, hf[p + "self_attn.v_proj.weight"])
    assert torch.equal(oc[r + "attn.in_proj_bias"][128:], hf[p + "self_attn.v_proj.bias"])
    assert torch.equal(oc[r + "mlp.c_proj.weight"], hf[p + "mlp.fc2.weight"])
    assert torch.equal(oc["visual.proj"], hf["visual_projection.weight"].T)
    assert torch.equal(oc["visual.ln_pre.weight"], hf["vision_model.pre_layrnorm.weight"])
    assert sum(t.numel() for t in oc.values()) == sum(t.numel() for t in hf.values())


@pytest.mark.parametrize("layout", ["hf", "openclip"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_streamed_file_round_trips(tmp_path, layout: str, dtype: torch.dtype) -> None:
    config = cv.tiny_clip_vision_config(hidden=64, heads=2, intermediate=96)
    path = cv.write_clip_vision(tmp_path / "tiny.safetensors", config, seed=1, dtype=dtype, layout=layout)
    ref = (cv.clip_vision_state_dict if layout == "hf" else cv.openclip_state_dict)(config, 1, dtype)
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert set(f.keys()) == set(ref)
        for key in ref:
            assert torch.equal(f.get_tensor(key), ref[key]), key
