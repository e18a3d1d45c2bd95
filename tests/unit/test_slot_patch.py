"""The attn2 patch: decoupled attention math, cond/uncond rows, schedule, stacking, plumbing."""

from __future__ import annotations

import copy

import pytest
import torch
from ipadapter_pack.ip_adapter.attention import sdpa_attention
from ipadapter_pack.ip_adapter.families.unet import SlotPatch, slot_patches
from ipadapter_pack.ip_adapter.model import IPAdapterModel
from ipadapter_pack.ip_adapter.patch import ImageBranch
from ipadapter_pack.ip_adapter.weighting import LayerPlan
from support.patch_inputs import (
    HEADS,
    LAYER,
    WIDTH,
    attend,
    layer_kv,
    options_for,
    prompt_for,
    qkv,
    small_sd15_adapter,
)


@pytest.fixture(scope="module")
def adapter() -> IPAdapterModel:
    return small_sd15_adapter()


def test_output_is_text_plus_weighted_image_term_with_uncond_rows_first(adapter) -> None:
    prompt = prompt_for(adapter, 1)
    patch = SlotPatch(ImageBranch(adapter, prompt, weight=0.7), LAYER, sdpa_attention)
    q, k, v = qkv(4)  # cond_or_uncond [1, 0]: rows 0-1 uncond, rows 2-3 cond
    out = patch(q, k, v, options_for([1, 0], [5.0, 5.0]))
    text = sdpa_attention(q, k, v, HEADS)
    expected_uncond = text[:2] + 0.7 * attend(q[:2], *layer_kv(adapter, prompt.uncond))
    expected_cond = text[2:] + 0.7 * attend(q[2:], *layer_kv(adapter, prompt.cond))
    torch.testing.assert_close(out, torch.cat([expected_uncond, expected_cond]), rtol=0, atol=1e-5)
    assert (out - text).abs().max() > 1e-2  # the image term is really there


def test_matches_diffusers_ip_adapter_attention_processor(adapter) -> None:
    attention_processor = pytest.importorskip("diffusers.models.attention_processor")
    prompt = prompt_for(adapter, 2)
    host = attention_processor.Attention(query_dim=WIDTH, cross_attention_dim=768, heads=HEADS,
                                         dim_head=WIDTH // HEADS)
    processor = attention_processor.IPAdapterAttnProcessor2_0(WIDTH, 768, num_tokens=(4,), scale=0.6)
    processor.to_k_ip[0].weight.data.copy_(adapter.ip_adapter[str(LAYER)].to_k_ip.weight)
    processor.to_v_ip[0].weight.data.copy_(adapter.ip_adapter[str(LAYER)].to_v_ip.weight)
    host.set_processor(processor)
    g = torch.Generator().manual_seed(3)
    hidden, text_context = torch.randn(2, 64, WIDTH, generator=g), torch.randn(2, 77, 768, generator=g)
    tokens = torch.cat([prompt.uncond, prompt.cond])  # diffusers batches uncond first too
    with torch.no_grad():
        expected = processor(host, hidden, encoder_hidden_states=(text_context, [tokens]))
        ours = SlotPatch(ImageBranch(adapter, prompt, weight=0.6), LAYER, sdpa_attention)
        out = host.to_out[0](ours(host.to_q(hidden), host.to_k(text_context), host.to_v(text_context),
                                  options_for([1, 0], [1.0])))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_weight_zero_layer_returns_plain_attention_bit_for_bit(adapter) -> None:
    patch = SlotPatch(ImageBranch(adapter, prompt_for(adapter, 1), weight=0.0), LAYER, sdpa_attention)
    q, k, v = qkv(2)
    assert torch.equal(patch(q, k, v, options_for([0], [1.0, 1.0])), sdpa_attention(q, k, v, HEADS))


def test_schedule_window_gates_each_row_by_its_sigma(adapter) -> None:
    prompt = prompt_for(adapter, 1)
    gated = SlotPatch(ImageBranch(adapter, prompt, 1.0, window=(10.0, 2.0)), LAYER, sdpa_attention)
    always = SlotPatch(ImageBranch(adapter, prompt, 1.0), LAYER, sdpa_attention)
    q, k, v = qkv(3)
    options = options_for([0], [11.0, 5.0, 1.0])  # before, inside, after the window
    out, full = gated(q, k, v, options), always(q, k, v, options)
    text = sdpa_attention(q, k, v, HEADS)
    assert torch.equal(out[0], text[0]) and torch.equal(out[2], text[2])
    torch.testing.assert_close(out[1], full[1], rtol=0, atol=0)


def test_stacked_patches_add_both_image_terms(adapter) -> None:
    first = SlotPatch(ImageBranch(adapter, prompt_for(adapter, 1), 0.5), LAYER, sdpa_attention)
    second = SlotPatch(ImageBranch(adapter, prompt_for(adapter, 2), 1.5), LAYER, sdpa_attention, previous=first)
    q, k, v = qkv(2)
    options = options_for([0, 1], [1.0])
    text = sdpa_attention(q, k, v, HEADS)
    alone_2 = SlotPatch(ImageBranch(adapter, prompt_for(adapter, 2), 1.5), LAYER, sdpa_attention)(q, k, v, options)
    expected = first(q, k, v, options) + (alone_2 - text)
    torch.testing.assert_close(second(q, k, v, options), expected, rtol=0, atol=1e-5)


def test_image_kv_is_projected_once_per_device_and_dtype(adapter, monkeypatch) -> None:
    branch = ImageBranch(adapter, prompt_for(adapter, 1), 1.0)
    calls = []
    original = adapter.image_kv
    monkeypatch.setattr(adapter, "image_kv", lambda *a, **kw: calls.append(a[1:]) or original(*a, **kw))
    patch = SlotPatch(branch, LAYER, sdpa_attention)
    q, k, v = qkv(2)
    for _ in range(3):
        patch(q, k, v, options_for([1, 0], [1.0]))
    patch(q.half(), k.half(), v.half(), options_for([1, 0], [1.0]))
    assert len(calls) == 4  # cond + uncond for fp32, then for fp16; never per call


def test_patch_is_shared_on_deepcopy_and_to_returns_self(adapter) -> None:
    marker = object()
    patch = SlotPatch(ImageBranch(adapter, prompt_for(adapter, 1), 1.0, models=(marker,)), LAYER, sdpa_attention)
    assert copy.deepcopy(patch) is patch
    assert patch.to(torch.device("cpu")) is patch and patch.to(torch.float16) is patch
    assert patch.models() == [marker]


def test_to_forwards_to_the_wrapped_patch_and_models_include_it(adapter) -> None:
    class Foreign:
        def __init__(self) -> None:
            self.moved = []

        def __call__(self, q, k, v, extra_options):
            return sdpa_attention(q, k, v, extra_options["n_heads"])

        def to(self, x):
            self.moved.append(x)
            return self

        def models(self):
            return ["foreign"]

    foreign = Foreign()
    patch = SlotPatch(ImageBranch(adapter, prompt_for(adapter, 1), 1.0, models=("ours",)), LAYER, sdpa_attention,
                      previous=foreign)
    patch.to(torch.device("cpu"))
    assert foreign.moved == [torch.device("cpu")]
    assert patch.models() == ["ours", "foreign"]


def test_to_returns_a_new_patch_when_the_wrapped_one_moves_and_leaves_the_shared_one_alone(adapter) -> None:
    class Moving:
        def __call__(self, q, k, v, extra_options):
            return sdpa_attention(q, k, v, extra_options["n_heads"])

        def to(self, x):
            return Moving()  # a new object, as a patch that copies its weights would return

    foreign = Moving()
    patch = SlotPatch(ImageBranch(adapter, prompt_for(adapter, 1), 1.0), LAYER, sdpa_attention, previous=foreign)
    moved = patch.to(torch.float16)
    assert moved is not patch and patch.previous is foreign  # the patch clones share is unchanged
    assert isinstance(moved.previous, Moving) and moved.previous is not foreign
    assert moved.branch is patch.branch and moved.weight == patch.weight


def test_moving_away_frees_cached_kv_on_other_devices(adapter) -> None:
    branch = ImageBranch(adapter, prompt_for(adapter, 1), 1.0)
    branch.kv(LAYER, torch.device("cpu"), torch.float32)
    branch.release_except(torch.device("cpu"))
    assert branch.cache.kv
    branch.release_except(torch.device("meta"))
    assert not branch.cache.kv


def test_zero_weight_layers_get_no_patch(adapter) -> None:
    branch = ImageBranch(adapter, prompt_for(adapter, 1), 1.0, plan=LayerPlan({1: 0.0, 3: 0.0}))
    made = slot_patches(branch, {1: "a", 3: "b", 5: "c"}, lambda slot: None, sdpa_attention)
    assert [slot for slot, _ in made] == ["c"]


@pytest.mark.parametrize("dtype,tolerance", [(torch.float16, 2e-2), (torch.bfloat16, 1e-1)])
def test_patch_keeps_the_unet_compute_dtype(adapter, dtype: torch.dtype, tolerance: float) -> None:
    patch = SlotPatch(ImageBranch(adapter, prompt_for(adapter, 1), 0.8), LAYER, sdpa_attention)
    q, k, v = qkv(2)
    options = options_for([1, 0], [1.0])
    reference = patch(q, k, v, options)
    low = patch(q.to(dtype), k.to(dtype), v.to(dtype), options)
    assert low.dtype == dtype and torch.isfinite(low).all()
    assert (low.float() - reference).abs().max() < tolerance
