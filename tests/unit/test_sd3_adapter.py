"""The SD3.5 (InstantX) adapter core without ComfyUI: detection, resampler and norm_ip vs diffusers, files."""

from __future__ import annotations

import pytest
import torch
from ipadapter_pack.ip_adapter.combine import CombineMode
from ipadapter_pack.ip_adapter.errors import AdapterFormatError, ImagePromptError
from ipadapter_pack.ip_adapter.sd3.format import detect_sd3, looks_like_sd3, spec_of
from ipadapter_pack.ip_adapter.sd3.model import SD3Adapter
from ipadapter_pack.ip_adapter.sd3.prompt import sd3_prompt_from_features
from ipadapter_pack.ip_adapter.sd3.prompt_file import is_sd3_prompt_file, load_sd3_prompt, save_sd3_prompt
from ipadapter_pack.ip_adapter.state_dict import read_file
from support import sd3_models

sd3_loader = pytest.importorskip("diffusers.loaders.transformer_sd3")
attention_processor = pytest.importorskip("diffusers.models.attention_processor")

TINY = {"clip_dim": 48, "dim": 128, "heads": 2, "tokens": 8, "depth": 4, "timestep_dim": 32}


def _tiny(blocks: int = 2, hidden: int = 128, seed: int = 0) -> dict[str, torch.Tensor]:
    return sd3_models.sd35_adapter_state_dict(blocks, hidden, seed, **TINY)


def test_published_shapes_are_read_from_the_tensors() -> None:
    shapes = sd3_models.sd35_adapter_shapes(38, 2432)  # the release: 38 joint blocks of SD3.5-Large
    sd = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    assert looks_like_sd3(sd)
    found = detect_sd3(sd, "ip-adapter.bin")
    assert (found.clip_dim, found.resampler_dim, found.depth, found.heads, found.tokens) == (1152, 1280, 4, 20, 64)
    assert (found.token_dim, found.hidden_size, found.head_dim, found.blocks) == (2432, 2432, 64, 38)
    assert (found.timestep_dim, found.ff_inner, found.model_heads) == (320, 5120, 38)
    assert found.describe() == "SD3.5 InstantX (64 tokens, SigLIP so400m-patch14-384, 38 joint blocks)"
    assert spec_of(found).encoder == "SigLIP so400m-patch14-384" and spec_of(found).layer_count == 38


def test_resampler_matches_diffusers() -> None:
    sd = _tiny(seed=1)
    ours = SD3Adapter.from_state_dict(sd)
    image_proj = {k[len("image_proj."):]: v for k, v in sd.items() if k.startswith("image_proj.")}
    convert = sd3_loader.SD3Transformer2DLoadersMixin._convert_ip_adapter_image_proj_to_diffusers
    reference = convert(None, image_proj, low_cpu_mem_usage=False).eval()
    features = torch.randn(2, 729, 48, generator=torch.Generator().manual_seed(0))
    timestep = torch.tensor([600.0, 250.0])
    with torch.no_grad():
        tokens, time_emb = ours.tokens(features, timestep)
        ref_tokens, ref_emb = reference(features, timestep)
    assert (tokens - ref_tokens).abs().max() < 1e-5 and (time_emb - ref_emb).abs().max() < 1e-5


def test_block_kv_matches_diffusers_processor() -> None:
    sd = _tiny(seed=2)
    ours = SD3Adapter.from_state_dict(sd)
    processor = attention_processor.SD3IPAdapterJointAttnProcessor2_0(128, 128, 64, timesteps_emb_dim=128)
    processor.load_state_dict({k[len("ip_adapter.1."):]: v for k, v in sd.items() if k.startswith("ip_adapter.1.")})
    gen = torch.Generator().manual_seed(1)
    tokens, time_emb = torch.randn(2, 8, 128, generator=gen), torch.randn(2, 128, generator=gen)
    with torch.no_grad():
        k, v = ours.block_kv(1, tokens, time_emb, torch.float32)
        normed = processor.norm_ip(tokens, temb=time_emb)
        ref_k = processor.norm_ip_k(processor.to_k_ip(normed).view(2, -1, 2, 64)).flatten(2)
        ref_v = processor.to_v_ip(normed)
    assert (k - ref_k).abs().max() < 1e-5 and (v - ref_v).abs().max() < 1e-5


@pytest.mark.parametrize("damage,words", [
    (lambda sd: sd.pop("ip_adapter.1.norm_q.weight"), ["ip_adapter.1.norm_q.weight", "missing"]),
    (lambda sd: sd.update({"ip_adapter.0.lora.weight": torch.zeros(1)}), ["ip_adapter.0.lora.weight"]),
    (lambda sd: sd.pop("image_proj.time_embedding.linear_2.bias"), ["time_embedding.linear_2.bias"]),
    (lambda sd: sd.update({"ip_adapter.1.to_k_ip.weight": torch.zeros(64, 128)}), ["ip_adapter.1.to_k_ip.weight"]),
    (lambda sd: [sd.update({k.replace("ip_adapter.1.", "ip_adapter.5."): sd.pop(k)})
                 for k in [k for k in sd if k.startswith("ip_adapter.1.")]], ["numbered 0..n-1"]),
    (lambda sd: sd.update({"unet.foo": torch.zeros(1)}), ["unet.foo"]),
])
def test_damaged_files_are_refused_by_key(damage, words) -> None:
    sd = _tiny()
    damage(sd)
    with pytest.raises(AdapterFormatError) as info:
        SD3Adapter.from_state_dict(sd, "ip-adapter.bin")
    for word in [*words, "ip-adapter.bin"]:
        assert word in str(info.value)


def test_release_bin_layout_loads_with_weights_only(tmp_path) -> None:
    sd = _tiny(seed=3)
    path = tmp_path / "ip-adapter.bin"
    torch.save(sd3_models.nested(sd), path)
    loaded = read_file(path)
    assert looks_like_sd3(loaded)
    model = SD3Adapter.from_state_dict(loaded)
    assert torch.equal(model.ip_adapter["1"].to_v_ip.weight, sd["ip_adapter.1.to_v_ip.weight"])


def test_prompt_features_combine_and_round_trip(tmp_path) -> None:
    shape = SD3Adapter.from_state_dict(_tiny()).shape
    cond = torch.randn(2, 729, 48)
    prompt = sd3_prompt_from_features(shape, cond, None, CombineMode.CONCAT, (1.0, 0.5))
    assert torch.equal(prompt.cond[1], cond[1] * 0.5) and not prompt.uncond.any()
    averaged = sd3_prompt_from_features(shape, cond, torch.ones(2, 729, 48), CombineMode.AVERAGE, None)
    assert averaged.cond.shape[0] == 1 and torch.equal(averaged.uncond, torch.ones(1, 729, 48))
    path = tmp_path / "a.image_prompt.safetensors"
    save_sd3_prompt(prompt, path)
    assert is_sd3_prompt_file(path)
    loaded = load_sd3_prompt(path)
    assert loaded.shape == shape and torch.equal(loaded.cond, prompt.cond)
    with pytest.raises(ImagePromptError, match="SigLIP"):
        sd3_prompt_from_features(shape, torch.randn(1, 257, 1280), None, CombineMode.CONCAT, None)


def test_loading_and_family_seam_pick_sd35() -> None:
    from ipadapter_pack.ip_adapter import families
    from ipadapter_pack.ip_adapter.families.seam import HookPoint
    from ipadapter_pack.ip_adapter.loading import adapter_from_state_dict
    from ipadapter_pack.ip_adapter.spec import BaseModel, ModelFamily

    adapter = adapter_from_state_dict(_tiny(), "ip-adapter.bin")  # the UNet format claims these prefixes too
    assert isinstance(adapter, SD3Adapter)
    spec = adapter.spec
    assert (spec.base, spec.family) == (BaseModel.SD35, ModelFamily.MMDIT)
    injection = families.injection_for(spec)
    assert injection.points(spec) == {i: HookPoint("dit", ("double_block", i), (("double_block", i),)) for i in (0, 1)}
    large = {HookPoint("dit", ("double_block", i), (("double_block", i),)): 2432 for i in range(38)}
    flux = {HookPoint("dit", ("double_block", i), (("double_block", i),)): 3072 for i in range(19)}
    assert families.describe_model(large) == "SD3.5-Large"
    assert injection.describe_model(flux) is None
