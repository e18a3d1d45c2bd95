"""XLabs Flux adapter files: detection from keys and shapes, strict loading, refusals by name."""

from __future__ import annotations

import pytest
import torch
from ipadapter_pack.ip_adapter.errors import AdapterFormatError
from ipadapter_pack.ip_adapter.families import flux_format
from ipadapter_pack.ip_adapter.loading import adapter_from_state_dict, load_adapter
from ipadapter_pack.ip_adapter.spec import BaseModel, ModelFamily, UncondSource
from support import checkpoints, flux_models


@pytest.mark.parametrize("tokens,variant", [(4, "XLabs v1"), (16, "XLabs v2")])
def test_detects_the_published_v1_and_v2_from_full_size_shapes(tokens: int, variant: str) -> None:
    meta = {k: torch.empty(s, device="meta") for k, s in flux_models.xlabs_shapes(tokens).items()}
    spec = flux_format.detect(meta, "flux-ip-adapter.safetensors")
    assert (spec.base, spec.family, spec.variant, spec.tokens) == (BaseModel.FLUX, ModelFamily.FLUX, variant, tokens)
    assert (spec.clip_dim, spec.encoder, spec.cross_attention_dim) == (768, "ViT-L/14", 4096)
    assert spec.layer_indices == tuple(range(19)) and set(spec.layer_widths) == {3072}
    assert spec.uncond_source is UncondSource.BLACK_IMAGE
    assert spec.describe() == f"Flux {variant} ({tokens} tokens, ViT-L/14, 19 layers)"


@pytest.mark.parametrize("suffix", ["safetensors", "bin"])
def test_loads_strictly_from_safetensors_and_a_weights_only_pickle(tmp_path, suffix: str) -> None:
    sd = flux_models.xlabs_state_dict(4, seed=1, width=64)
    path = tmp_path / f"flux-ip-adapter.{suffix}"
    if suffix == "safetensors":
        flux_models.save(sd, path)
    else:
        torch.save(sd, path)  # a flat pickle of tensors; read with weights_only=True
    model = load_adapter(path)
    assert isinstance(model, flux_format.XLabsFluxAdapter) and model.spec.tokens == 4
    loaded = model.state_dict()
    assert set(loaded) == set(sd) and all(torch.equal(loaded[k], v) for k, v in sd.items())


def test_projection_and_kv_follow_the_reference_math() -> None:
    sd = flux_models.xlabs_state_dict(16, seed=2, width=32)
    model = adapter_from_state_dict(sd, "v2")
    embeds = torch.randn(3, 768, generator=torch.Generator().manual_seed(0))
    tokens = model.project(embeds)
    rows = embeds @ sd["ip_adapter_proj_model.proj.weight"].T + sd["ip_adapter_proj_model.proj.bias"]
    expected = torch.nn.functional.layer_norm(rows.reshape(3, 16, 32), (32,), sd["ip_adapter_proj_model.norm.weight"],
                                              sd["ip_adapter_proj_model.norm.bias"])
    torch.testing.assert_close(tokens, expected, rtol=0, atol=1e-5)
    k, v = model.image_kv(tokens, torch.device("cpu"), torch.float32)[7]
    prefix = "double_blocks.7.processor.ip_adapter_double_stream_"
    torch.testing.assert_close(k, tokens @ sd[prefix + "k_proj.weight"].T + sd[prefix + "k_proj.bias"])
    torch.testing.assert_close(v, tokens @ sd[prefix + "v_proj.weight"].T + sd[prefix + "v_proj.bias"])


def _broken(change) -> dict:
    sd = flux_models.xlabs_state_dict(4, seed=3, width=32)
    change(sd)
    return sd


@pytest.mark.parametrize("change,message", [
    (lambda sd: sd.pop("double_blocks.18.processor.ip_adapter_double_stream_v_proj.weight"),
     r"missing double_blocks\.18\.processor\.ip_adapter_double_stream_v_proj\.weight"),
    (lambda sd: sd.pop("double_blocks.5.processor.ip_adapter_double_stream_k_proj.bias"),
     r"missing double_blocks\.5\.processor\.ip_adapter_double_stream_k_proj\.bias"),
    (lambda sd: sd.update({"double_blocks.3.processor.ip_adapter_double_stream_q_proj.weight": torch.zeros(1)}),
     r"keys that layout does not have: double_blocks\.3\.processor\.ip_adapter_double_stream_q_proj\.weight"),
    (lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("double_blocks.18.")],
     r"exactly the 19 double blocks"),
    (lambda sd: sd.update({"ip_adapter_proj_model.proj.weight": torch.zeros(4 * 32 + 1, 768)}),
     r"not a multiple of the 32-wide norm"),
    (lambda sd: sd.update({"double_blocks.2.processor.ip_adapter_double_stream_k_proj.weight": torch.zeros(64, 16)}),
     r"mixes checkpoints"),
    (lambda sd: sd["double_blocks.0.processor.ip_adapter_double_stream_k_proj.weight"].view(-1)[0].fill_(float("nan")),
     r"NaN or infinite values in double_blocks\.0\.processor"),
])
def test_damaged_files_are_refused_by_key_name(change, message: str) -> None:
    with pytest.raises(AdapterFormatError, match=message):
        adapter_from_state_dict(_broken(change), "flux-ip-adapter.safetensors")


def test_unet_files_are_not_taken_for_flux_and_the_reverse() -> None:
    unet = checkpoints.ip_adapter_state_dict("ip-adapter_sd15", "small", seed=1)
    assert not flux_format.claims(unet) and adapter_from_state_dict(unet, "sd15").spec.base is BaseModel.SD15
    assert flux_format.claims(flux_models.xlabs_state_dict(4, width=32))
    with pytest.raises(AdapterFormatError, match=r"'lora\.safetensors' is not an IP-Adapter checkpoint.*XLabs Flux"):
        adapter_from_state_dict({"lora_unet_x.alpha": torch.zeros(1)}, "lora.safetensors")


def test_instantx_flux_files_are_named_and_refused_with_what_to_use() -> None:
    """InstantX's layout (read from the authors' code): MLP image_proj 1152 -> 2304 -> 128 x 4096 + LayerNorm,
    to_k_ip/to_v_ip [3072, 4096] without bias for each of the 19 double + 38 single blocks."""
    shapes = {"image_proj.proj.0.weight": (2304, 1152), "image_proj.proj.0.bias": (2304,),
              "image_proj.proj.2.weight": (128 * 4096, 2304), "image_proj.proj.2.bias": (128 * 4096,),
              "image_proj.norm.weight": (4096,), "image_proj.norm.bias": (4096,)}
    shapes.update({f"ip_adapter.{i}.to_{kv}_ip.weight": (3072, 4096) for i in range(57) for kv in "kv"})
    meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    with pytest.raises(AdapterFormatError, match=r"'ip-adapter\.bin' looks like InstantX's FLUX\.1-dev-IP-Adapter.*"
                                                 r"not supported.*XLabs' flux-ip-adapter"):
        adapter_from_state_dict(meta, "ip-adapter.bin")
