"""The attn2 patch's hot path and control: cached rows per layout, the weight in V, the schedule gate,
the image backend, embeds scaling, inverted layers, masks, in-place adds."""

from __future__ import annotations

import pytest
import torch
from ipadapter_pack.ip_adapter.attention import (
    EmbedsScaling,
    schedule_gate,
    sdpa_attention,
)
from ipadapter_pack.ip_adapter.families.unet import SlotPatch, slot_patches
from ipadapter_pack.ip_adapter.model import IPAdapterModel
from ipadapter_pack.ip_adapter.patch import ImageBranch, StepGate
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


def test_image_rows_are_reused_across_steps_and_per_layout(adapter) -> None:
    """Batched cond+uncond and separate cond / uncond calls each keep their rows: no rebuild when they alternate."""
    branch = ImageBranch(adapter, prompt_for(adapter, 1), 1.0)
    patch = SlotPatch(branch, LAYER, sdpa_attention)
    q, k, v = qkv(4)
    patch(q, k, v, options_for([1, 0], [1.0, 1.0]))
    first = branch.rows(LAYER, [1, 0], 2, q.device, q.dtype)
    patch(q, k, v, options_for([1, 0], [2.0, 2.0]))
    assert branch.rows(LAYER, [1, 0], 2, q.device, q.dtype)[1] is first[1]  # same storage, no per-step allocation
    patch(q[:2], k[:2], v[:2], options_for([0], [1.0, 1.0]))  # low memory: cond rows alone ...
    patch(q[:2], k[:2], v[:2], options_for([1], [1.0, 1.0]))  # ... then uncond rows alone
    cond_only = branch.rows(LAYER, [0], 2, q.device, q.dtype)
    assert cond_only[1].shape[0] == 2 and cond_only[1] is not first[1]
    for _ in range(3):  # alternating layouts reuse their entries
        patch(q[:2], k[:2], v[:2], options_for([0], [1.0, 1.0]))
        patch(q, k, v, options_for([1, 0], [1.0, 1.0]))
    assert branch.rows(LAYER, [0], 2, q.device, q.dtype)[1] is cond_only[1]
    assert branch.rows(LAYER, [1, 0], 2, q.device, q.dtype)[1] is first[1]
    assert len(branch.cache.rows.held_layouts()) == 3


def test_v_only_folds_the_weight_into_v_and_matches_weighting_the_output(adapter) -> None:
    prompt = prompt_for(adapter, 1)
    branch = ImageBranch(adapter, prompt, 0.7)
    k_ip, v_ip = branch.rows(LAYER, [0], 1, torch.device("cpu"), torch.float32)
    k_raw, v_raw = layer_kv(adapter, prompt.cond)
    assert torch.equal(k_ip, k_raw) and torch.equal(v_ip, v_raw * 0.7)
    q = qkv(1)[0]
    torch.testing.assert_close(sdpa_attention(q, k_ip, v_ip, HEADS), 0.7 * attend(q, k_raw, v_raw), rtol=0, atol=1e-6)


def test_a_step_outside_the_window_skips_the_image_attention_on_the_cpu(adapter) -> None:
    calls = []

    def attention(q, k, v, heads, **kwargs):
        calls.append(k.shape[1])
        return sdpa_attention(q, k, v, heads)

    prompt = prompt_for(adapter, 1)
    patch = SlotPatch(ImageBranch(adapter, prompt, 1.0, window=(10.0, 2.0)), LAYER, attention)
    q, k, v = qkv(2)
    assert torch.equal(patch(q, k, v, options_for([1, 0], [1.0])), sdpa_attention(q, k, v, HEADS))
    assert calls == [77]  # the text branch only
    patch(q, k, v, options_for([1, 0], [5.0]))
    assert calls == [77, 77, 4]


def test_the_image_term_can_use_its_own_backend(adapter) -> None:
    seen = {"text": [], "image": []}

    def text_attention(q, k, v, heads, **kwargs):
        seen["text"].append(k.shape[1])
        return sdpa_attention(q, k, v, heads)

    def image_attention(q, k, v, heads, **kwargs):
        seen["image"].append(k.shape[1])
        return sdpa_attention(q, k, v, heads)

    prompt = prompt_for(adapter, 1)
    q, k, v = qkv(2)
    options = options_for([1, 0], [1.0])
    split = SlotPatch(ImageBranch(adapter, prompt, 0.7), LAYER, text_attention, image_attention=image_attention)
    same = SlotPatch(ImageBranch(adapter, prompt, 0.7), LAYER, sdpa_attention)
    assert torch.equal(split(q, k, v, options), same(q, k, v, options))
    assert seen == {"text": [77], "image": [4]}
    made = slot_patches(ImageBranch(adapter, prompt, 1.0), {LAYER: "slot"}, lambda slot: None, text_attention,
                        image_attention)
    assert made[0][1].image_attention is image_attention and made[0][1].attention is text_attention


@pytest.mark.parametrize("window,sigmas", [(None, [1.0, 1.0]), ((10.0, 2.0), [5.0, 11.0])])
def test_v_only_is_the_foundations_expression_with_the_weight_moved_into_v(adapter, window, sigmas) -> None:
    """Exactly `text + gate * Attn(q, K', w V')`, and within float rounding of the foundation's `text + w * term`."""
    prompt = prompt_for(adapter, 1)
    q, k, v = qkv(4)
    options = options_for([1, 0], sigmas)
    with torch.no_grad():
        out = SlotPatch(ImageBranch(adapter, prompt, 0.7, window=window), LAYER, sdpa_attention)(q, k, v, options)
        k_ip = torch.cat([layer_kv(adapter, prompt.uncond)[0].expand(2, -1, -1),
                          layer_kv(adapter, prompt.cond)[0].expand(2, -1, -1)])
        v_ip = torch.cat([layer_kv(adapter, prompt.uncond)[1].expand(2, -1, -1),
                          layer_kv(adapter, prompt.cond)[1].expand(2, -1, -1)])
        text = sdpa_attention(q, k, v, HEADS)
        gate = torch.ones(4, 1, 1) if window is None else schedule_gate(torch.tensor(sigmas), *window, chunks=2)
        folded = text + sdpa_attention(q, k_ip, v_ip * 0.7, HEADS) * gate
        foundation = text + sdpa_attention(q, k_ip, v_ip, HEADS) * (gate * 0.7)
    assert torch.equal(out, folded)
    torch.testing.assert_close(out, foundation, rtol=1e-6, atol=1e-6)
    if window is not None:  # rows outside the window are the text branch, bit for bit
        assert torch.equal(out[1::2], text[1::2])


def test_image_term_is_added_in_place_into_the_fresh_text_output(adapter) -> None:
    made = []

    def attention(q, k, v, heads, **kwargs):
        made.append(sdpa_attention(q, k, v, heads))
        return made[-1]

    mask = torch.zeros(1, 8, 8)
    mask[..., :4] = 1
    branch = ImageBranch(adapter, prompt_for(adapter, 1), 0.7, window=(10.0, 2.0), mask=mask)
    patch = SlotPatch(branch, LAYER, attention)
    q, k, v = qkv(2)
    options = {**options_for([1, 0], [5.0]), "original_shape": [1, 4, 8, 8]}
    with torch.no_grad():
        out = patch(q, k, v, options)
    assert out.data_ptr() == made[0].data_ptr()  # no new output tensor
    with torch.enable_grad():  # autograd on: nothing in place, same numbers
        again = patch(q, k, v, options)
    assert again.data_ptr() != made[-2].data_ptr() and torch.equal(again, out)


def test_a_foreign_patchs_output_is_never_modified(adapter) -> None:
    kept = {}

    def foreign(q, k, v, extra_options):
        kept["out"] = sdpa_attention(q, k, v, HEADS)
        kept["copy"] = kept["out"].clone()
        return kept["out"]

    q, k, v = qkv(2)
    with torch.no_grad():
        SlotPatch(ImageBranch(adapter, prompt_for(adapter, 1), 1.0), LAYER, sdpa_attention, previous=foreign)(
            q, k, v, options_for([0], [1.0]))
    assert torch.equal(kept["out"], kept["copy"])


@pytest.mark.parametrize("mode", list(EmbedsScaling))
def test_embeds_scaling_modes_follow_the_reference_formulas(adapter, mode) -> None:
    prompt, weight = prompt_for(adapter, 1), 0.6
    q, k, v = qkv(2)
    k_ip, v_ip = layer_kv(adapter, prompt.cond)
    penalized = weight * WIDTH / 1280.0
    if mode is EmbedsScaling.V_ONLY:
        term = weight * attend(q, k_ip, v_ip)
    elif mode is EmbedsScaling.K_V:
        term = attend(q, k_ip * weight, v_ip * weight)
    elif mode is EmbedsScaling.K_V_PENALTY:
        term = attend(q, k_ip * penalized, v_ip * penalized)
    else:
        mean = v_ip.mean(dim=1, keepdim=True)
        term = attend(q, k_ip * penalized, v_ip - mean + mean * penalized)
    with torch.no_grad():
        out = SlotPatch(ImageBranch(adapter, prompt, weight, embeds_scaling=mode), LAYER, sdpa_attention)(
            q, k, v, options_for([0], [1.0]))
    torch.testing.assert_close(out, sdpa_attention(q, k, v, HEADS) + term, rtol=0, atol=1e-5)


def test_scaling_modes_differ_from_each_other(adapter) -> None:
    q, k, v = qkv(2)
    outs = [SlotPatch(ImageBranch(adapter, prompt_for(adapter, 1), 0.6, embeds_scaling=mode), LAYER, sdpa_attention)(
        q, k, v, options_for([0], [1.0])) for mode in EmbedsScaling]
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            assert (outs[i] - outs[j]).abs().max() > 1e-4, (i, j)


def test_an_inverted_layer_gives_cond_rows_nothing_and_uncond_rows_the_reference(adapter) -> None:
    prompt = prompt_for(adapter, 1)
    branch = ImageBranch(adapter, prompt, 0.8, plan=LayerPlan(inverted=frozenset({LAYER})))
    q, k, v = qkv(4)  # [1, 0]: rows 0-1 uncond, rows 2-3 cond
    with torch.no_grad():
        out = SlotPatch(branch, LAYER, sdpa_attention)(q, k, v, options_for([1, 0], [1.0]))
    text = sdpa_attention(q, k, v, HEADS)
    assert torch.equal(out[2:], text[2:])
    expected = text[:2] + 0.8 * attend(q[:2], *layer_kv(adapter, prompt.cond))
    torch.testing.assert_close(out[:2], expected, rtol=0, atol=1e-5)


def test_mask_confines_the_term_per_token_and_per_latent(adapter) -> None:
    prompt = prompt_for(adapter, 1)
    masks = torch.zeros(2, 8, 8)
    masks[0, :, :4] = 1.0  # latent 0: left half; latent 1: nothing
    q, k, v = qkv(4)  # 64 tokens = an 8x8 grid; chunks [1, 0] x 2 latents
    options = {**options_for([1, 0], [1.0, 1.0]), "original_shape": [2, 4, 8, 8]}
    with torch.no_grad():
        masked = SlotPatch(ImageBranch(adapter, prompt, 1.0, mask=masks), LAYER, sdpa_attention)(q, k, v, options)
        full = SlotPatch(ImageBranch(adapter, prompt, 1.0), LAYER, sdpa_attention)(q, k, v, options)
    text = sdpa_attention(q, k, v, HEADS)
    left = torch.zeros(8, 8, dtype=torch.bool)
    left[:, :4] = True
    left = left.flatten()
    for row in (0, 2):  # latent 0 in the uncond and cond chunks
        assert torch.equal(masked[row, left], full[row, left])
        assert torch.equal(masked[row, ~left], text[row, ~left])
    for row in (1, 3):  # latent 1: its mask is empty
        assert torch.equal(masked[row], text[row])


def test_the_gate_is_computed_once_per_step(adapter) -> None:
    branch = ImageBranch(adapter, prompt_for(adapter, 1), 1.0, window=(10.0, 2.0))
    cpu = torch.device("cpu")
    sigmas = torch.tensor([5.0, 11.0])
    first = branch.gate(sigmas, 2, cpu, torch.float32)
    assert first.factor is not None and first.factor.view(-1).tolist() == [1.0, 0.0, 1.0, 0.0]
    assert branch.gate(sigmas, 2, cpu, torch.float32) is first  # every layer of the step shares it
    assert branch.gate(torch.tensor([5.0, 11.0]), 2, cpu, torch.float32) is not first  # next step: new tensor
    # CPU sigmas are read on the host: all rows in the window -> nothing to multiply; none -> skip.
    assert branch.gate(torch.tensor([5.0]), 2, cpu, torch.float32) == StepGate()
    assert branch.gate(torch.tensor([1.0]), 2, cpu, torch.float32) == StepGate(skip=True)
    assert ImageBranch(adapter, prompt_for(adapter, 1), 1.0).gate(sigmas, 2, cpu, torch.float32) == StepGate()


def test_the_gate_stays_a_tensor_off_the_cpu(adapter) -> None:
    """On an accelerator the sigmas are never read back (no sync): the gate multiplies, even at 1 or 0."""
    branch = ImageBranch(adapter, prompt_for(adapter, 1), 1.0, window=(10.0, 2.0))
    gate = branch.gate(torch.tensor([1.0], device="meta"), 2, torch.device("meta"), torch.float16)
    assert not gate.skip and gate.factor is not None
    assert gate.factor.device.type == "meta" and gate.factor.dtype == torch.float16


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_whole_patch_runs_without_reading_the_device_back(adapter, dtype) -> None:
    """A stand-in for "no sync per layer on CUDA": on `meta` tensors every host read
    (`.item()`, `bool()`, `.tolist()`, `.cpu()`) raises. Window, mask, inverted layer and
    cached rows all run here, in the UNet's dtype, for several steps."""
    mask = torch.zeros(1, 8, 8)
    mask[..., :4] = 1
    branch = ImageBranch(adapter, prompt_for(adapter, 1), 0.7, window=(10.0, 2.0), mask=mask,
                         plan=LayerPlan(inverted=frozenset({LAYER})))
    patch = SlotPatch(branch, LAYER, sdpa_attention)
    meta = torch.device("meta")
    q, k, v = (t.to(device=meta, dtype=dtype) for t in qkv(2))
    with torch.inference_mode():
        for sigma in (12.0, 5.0, 1.0):
            options = {**options_for([1, 0], [sigma]), "original_shape": [1, 4, 8, 8],
                       "sigmas": torch.tensor([sigma], device=meta)}
            out = patch(q, k, v, options)
            assert out.device == meta and out.dtype == dtype and out.shape == q.shape
    assert {layout[2] for layout in branch.cache.rows.held_layouts()} == {meta}


def test_the_layer_weight_is_fixed_when_the_patch_is_made(adapter) -> None:
    branch = ImageBranch(adapter, prompt_for(adapter, 1), 0.5, plan=LayerPlan({LAYER: 0.4}))
    assert SlotPatch(branch, LAYER, sdpa_attention).weight == pytest.approx(0.2)
