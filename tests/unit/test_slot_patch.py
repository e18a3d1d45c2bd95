"""The attn2 patch: decoupled attention math, cond/uncond rows, schedule, stacking, plumbing."""

from __future__ import annotations

import copy

import pytest
import torch
from ipadapter_pack.ip_adapter.attention import (
    EmbedsScaling,
    schedule_gate,
    sdpa_attention,
)
from ipadapter_pack.ip_adapter.model import IPAdapterModel
from ipadapter_pack.ip_adapter.patch import (
    ImageBranch,
    SlotPatch,
    StepGate,
    slot_patches,
)
from ipadapter_pack.ip_adapter.prompt import ImagePrompt
from support import checkpoints

HEADS, WIDTH, LAYER = 8, 128, 31  # layer 31 = SD1.5 middle block, 128 wide in the small layout


@pytest.fixture(scope="module")
def adapter() -> IPAdapterModel:
    return IPAdapterModel.from_state_dict(checkpoints.ip_adapter_state_dict("ip-adapter_sd15", "small", seed=5), "sd15")


def _prompt(adapter: IPAdapterModel, seed: int) -> ImagePrompt:
    g = torch.Generator().manual_seed(seed)
    cond = adapter.project(torch.randn(1, 1024, generator=g))
    uncond = adapter.project(torch.zeros(1, 1024))
    return ImagePrompt(cond=cond, uncond=uncond, spec=adapter.spec)


def _qkv(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 64, WIDTH, generator=g), torch.randn(batch, 77, WIDTH, generator=g),
            torch.randn(batch, 77, WIDTH, generator=g))


def _options(cond_or_uncond: list[int], sigmas: list[float]) -> dict:
    return {"n_heads": HEADS, "dim_head": WIDTH // HEADS, "cond_or_uncond": cond_or_uncond,
            "sigmas": torch.tensor(sigmas), "attn_precision": None}


def _image_term(adapter: IPAdapterModel, q: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    layer = adapter.ip_adapter[str(LAYER)]
    k = layer.to_k_ip(tokens).expand(q.shape[0], -1, -1)
    v = layer.to_v_ip(tokens).expand(q.shape[0], -1, -1)
    return sdpa_attention(q, k, v, HEADS)


def test_output_is_text_plus_weighted_image_term_with_uncond_rows_first(adapter) -> None:
    prompt = _prompt(adapter, 1)
    patch = SlotPatch(ImageBranch(adapter, prompt, weight=0.7), LAYER, sdpa_attention)
    q, k, v = _qkv(4)  # cond_or_uncond [1, 0]: rows 0-1 uncond, rows 2-3 cond
    out = patch(q, k, v, _options([1, 0], [5.0, 5.0]))
    text = sdpa_attention(q, k, v, HEADS)
    expected_uncond = text[:2] + 0.7 * _image_term(adapter, q[:2], prompt.uncond)
    expected_cond = text[2:] + 0.7 * _image_term(adapter, q[2:], prompt.cond)
    torch.testing.assert_close(out, torch.cat([expected_uncond, expected_cond]), rtol=0, atol=1e-5)
    assert (out - text).abs().max() > 1e-2  # the image term is really there


def test_matches_diffusers_ip_adapter_attention_processor(adapter) -> None:
    attention_processor = pytest.importorskip("diffusers.models.attention_processor")
    prompt = _prompt(adapter, 2)
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
                                  _options([1, 0], [1.0])))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_weight_zero_layer_returns_plain_attention_bit_for_bit(adapter) -> None:
    patch = SlotPatch(ImageBranch(adapter, _prompt(adapter, 1), weight=0.0), LAYER, sdpa_attention)
    q, k, v = _qkv(2)
    assert torch.equal(patch(q, k, v, _options([0], [1.0, 1.0])), sdpa_attention(q, k, v, HEADS))


def test_schedule_window_gates_each_row_by_its_sigma(adapter) -> None:
    prompt = _prompt(adapter, 1)
    gated = SlotPatch(ImageBranch(adapter, prompt, 1.0, window=(10.0, 2.0)), LAYER, sdpa_attention)
    always = SlotPatch(ImageBranch(adapter, prompt, 1.0), LAYER, sdpa_attention)
    q, k, v = _qkv(3)
    options = _options([0], [11.0, 5.0, 1.0])  # before, inside, after the window
    out, full = gated(q, k, v, options), always(q, k, v, options)
    text = sdpa_attention(q, k, v, HEADS)
    assert torch.equal(out[0], text[0]) and torch.equal(out[2], text[2])
    torch.testing.assert_close(out[1], full[1], rtol=0, atol=0)


def test_stacked_patches_add_both_image_terms(adapter) -> None:
    first = SlotPatch(ImageBranch(adapter, _prompt(adapter, 1), 0.5), LAYER, sdpa_attention)
    second = SlotPatch(ImageBranch(adapter, _prompt(adapter, 2), 1.5), LAYER, sdpa_attention, previous=first)
    q, k, v = _qkv(2)
    options = _options([0, 1], [1.0])
    text = sdpa_attention(q, k, v, HEADS)
    alone_2 = SlotPatch(ImageBranch(adapter, _prompt(adapter, 2), 1.5), LAYER, sdpa_attention)(q, k, v, options)
    expected = first(q, k, v, options) + (alone_2 - text)
    torch.testing.assert_close(second(q, k, v, options), expected, rtol=0, atol=1e-5)


def test_image_kv_is_projected_once_per_device_and_dtype(adapter, monkeypatch) -> None:
    branch = ImageBranch(adapter, _prompt(adapter, 1), 1.0)
    calls = []
    original = adapter.image_kv
    monkeypatch.setattr(adapter, "image_kv", lambda *a, **kw: calls.append(a[1:]) or original(*a, **kw))
    patch = SlotPatch(branch, LAYER, sdpa_attention)
    q, k, v = _qkv(2)
    for _ in range(3):
        patch(q, k, v, _options([1, 0], [1.0]))
    patch(q.half(), k.half(), v.half(), _options([1, 0], [1.0]))
    assert len(calls) == 4  # cond + uncond for fp32, then for fp16; never per call


def test_patch_is_shared_on_deepcopy_and_to_returns_self(adapter) -> None:
    marker = object()
    patch = SlotPatch(ImageBranch(adapter, _prompt(adapter, 1), 1.0, models=(marker,)), LAYER, sdpa_attention)
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
    patch = SlotPatch(ImageBranch(adapter, _prompt(adapter, 1), 1.0, models=("ours",)), LAYER, sdpa_attention,
                      previous=foreign)
    patch.to(torch.device("cpu"))
    assert foreign.moved == [torch.device("cpu")]
    assert patch.models() == ["ours", "foreign"]


def test_moving_away_frees_cached_kv_on_other_devices(adapter) -> None:
    branch = ImageBranch(adapter, _prompt(adapter, 1), 1.0)
    branch.kv(LAYER, torch.device("cpu"), torch.float32)
    branch.release_except(torch.device("cpu"))
    assert branch._kv
    branch.release_except(torch.device("meta"))
    assert not branch._kv


def test_zero_weight_layers_get_no_patch(adapter) -> None:
    branch = ImageBranch(adapter, _prompt(adapter, 1), 1.0, layer_weights={1: 0.0, 3: 0.0})
    made = slot_patches(branch, {1: "a", 3: "b", 5: "c"}, lambda slot: None, sdpa_attention)
    assert [slot for slot, _ in made] == ["c"]


@pytest.mark.parametrize("dtype,tolerance", [(torch.float16, 2e-2), (torch.bfloat16, 1e-1)])
def test_patch_keeps_the_unet_compute_dtype(adapter, dtype: torch.dtype, tolerance: float) -> None:
    patch = SlotPatch(ImageBranch(adapter, _prompt(adapter, 1), 0.8), LAYER, sdpa_attention)
    q, k, v = _qkv(2)
    options = _options([1, 0], [1.0])
    reference = patch(q, k, v, options)
    low = patch(q.to(dtype), k.to(dtype), v.to(dtype), options)
    assert low.dtype == dtype and torch.isfinite(low).all()
    assert (low.float() - reference).abs().max() < tolerance


def test_image_rows_are_reused_across_steps_and_per_layout(adapter) -> None:
    """Batched cond+uncond and separate cond / uncond calls each keep their rows: no rebuild when they alternate."""
    branch = ImageBranch(adapter, _prompt(adapter, 1), 1.0)
    patch = SlotPatch(branch, LAYER, sdpa_attention)
    q, k, v = _qkv(4)
    patch(q, k, v, _options([1, 0], [1.0, 1.0]))
    first = branch.rows(LAYER, [1, 0], 2, q.device, q.dtype)
    patch(q, k, v, _options([1, 0], [2.0, 2.0]))
    assert branch.rows(LAYER, [1, 0], 2, q.device, q.dtype)[1] is first[1]  # same storage, no per-step allocation
    patch(q[:2], k[:2], v[:2], _options([0], [1.0, 1.0]))  # low memory: cond rows alone ...
    patch(q[:2], k[:2], v[:2], _options([1], [1.0, 1.0]))  # ... then uncond rows alone
    cond_only = branch.rows(LAYER, [0], 2, q.device, q.dtype)
    assert cond_only[1].shape[0] == 2 and cond_only[1] is not first[1]
    for _ in range(3):  # alternating layouts reuse their entries
        patch(q[:2], k[:2], v[:2], _options([0], [1.0, 1.0]))
        patch(q, k, v, _options([1, 0], [1.0, 1.0]))
    assert branch.rows(LAYER, [0], 2, q.device, q.dtype)[1] is cond_only[1]
    assert branch.rows(LAYER, [1, 0], 2, q.device, q.dtype)[1] is first[1]
    assert len(branch._rows.held_layouts()) == 3


def test_v_only_folds_the_weight_into_v_and_matches_weighting_the_output(adapter) -> None:
    prompt = _prompt(adapter, 1)
    branch = ImageBranch(adapter, prompt, 0.7)
    k_ip, v_ip = branch.rows(LAYER, [0], 1, torch.device("cpu"), torch.float32)
    k_raw, v_raw = _layer_kv(adapter, prompt.cond)
    assert torch.equal(k_ip, k_raw) and torch.equal(v_ip, v_raw * 0.7)
    q = _qkv(1)[0]
    torch.testing.assert_close(sdpa_attention(q, k_ip, v_ip, HEADS), 0.7 * _term(q, k_raw, v_raw), rtol=0, atol=1e-6)


def test_a_step_outside_the_window_skips_the_image_attention_on_the_cpu(adapter) -> None:
    calls = []

    def attention(q, k, v, heads, **kwargs):
        calls.append(k.shape[1])
        return sdpa_attention(q, k, v, heads)

    prompt = _prompt(adapter, 1)
    patch = SlotPatch(ImageBranch(adapter, prompt, 1.0, window=(10.0, 2.0)), LAYER, attention)
    q, k, v = _qkv(2)
    assert torch.equal(patch(q, k, v, _options([1, 0], [1.0])), sdpa_attention(q, k, v, HEADS))
    assert calls == [77]  # the text branch only
    patch(q, k, v, _options([1, 0], [5.0]))
    assert calls == [77, 77, 4]


def test_the_image_term_can_use_its_own_backend(adapter) -> None:
    seen = {"text": [], "image": []}

    def text_attention(q, k, v, heads, **kwargs):
        seen["text"].append(k.shape[1])
        return sdpa_attention(q, k, v, heads)

    def image_attention(q, k, v, heads, **kwargs):
        seen["image"].append(k.shape[1])
        return sdpa_attention(q, k, v, heads)

    prompt = _prompt(adapter, 1)
    q, k, v = _qkv(2)
    options = _options([1, 0], [1.0])
    split = SlotPatch(ImageBranch(adapter, prompt, 0.7), LAYER, text_attention, image_attention=image_attention)
    same = SlotPatch(ImageBranch(adapter, prompt, 0.7), LAYER, sdpa_attention)
    assert torch.equal(split(q, k, v, options), same(q, k, v, options))
    assert seen == {"text": [77], "image": [4]}
    made = slot_patches(ImageBranch(adapter, prompt, 1.0), {LAYER: "slot"}, lambda slot: None, text_attention,
                        image_attention)
    assert made[0][1].image_attention is image_attention and made[0][1].attention is text_attention


# --- control: embeds scaling, inverted layers, masks, lean hot path (issue 3) ---

def _term(q: torch.Tensor, k_tokens: torch.Tensor, v_tokens: torch.Tensor) -> torch.Tensor:
    return sdpa_attention(q, k_tokens.expand(q.shape[0], -1, -1), v_tokens.expand(q.shape[0], -1, -1), HEADS)


def _layer_kv(adapter: IPAdapterModel, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    layer = adapter.ip_adapter[str(LAYER)]
    with torch.no_grad():
        return layer.to_k_ip(tokens), layer.to_v_ip(tokens)


@pytest.mark.parametrize("window,sigmas", [(None, [1.0, 1.0]), ((10.0, 2.0), [5.0, 11.0])])
def test_v_only_is_the_foundations_expression_with_the_weight_moved_into_v(adapter, window, sigmas) -> None:
    """Exactly `text + gate * Attn(q, K', w V')`, and within float rounding of the foundation's `text + w * term`."""
    prompt = _prompt(adapter, 1)
    q, k, v = _qkv(4)
    options = _options([1, 0], sigmas)
    with torch.no_grad():
        out = SlotPatch(ImageBranch(adapter, prompt, 0.7, window=window), LAYER, sdpa_attention)(q, k, v, options)
        k_ip = torch.cat([_layer_kv(adapter, prompt.uncond)[0].expand(2, -1, -1),
                          _layer_kv(adapter, prompt.cond)[0].expand(2, -1, -1)])
        v_ip = torch.cat([_layer_kv(adapter, prompt.uncond)[1].expand(2, -1, -1),
                          _layer_kv(adapter, prompt.cond)[1].expand(2, -1, -1)])
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
    branch = ImageBranch(adapter, _prompt(adapter, 1), 0.7, window=(10.0, 2.0), mask=mask)
    patch = SlotPatch(branch, LAYER, attention)
    q, k, v = _qkv(2)
    options = {**_options([1, 0], [5.0]), "original_shape": [1, 4, 8, 8]}
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

    q, k, v = _qkv(2)
    with torch.no_grad():
        SlotPatch(ImageBranch(adapter, _prompt(adapter, 1), 1.0), LAYER, sdpa_attention, previous=foreign)(
            q, k, v, _options([0], [1.0]))
    assert torch.equal(kept["out"], kept["copy"])


@pytest.mark.parametrize("mode", list(EmbedsScaling))
def test_embeds_scaling_modes_follow_the_reference_formulas(adapter, mode) -> None:
    prompt, weight = _prompt(adapter, 1), 0.6
    q, k, v = _qkv(2)
    k_ip, v_ip = _layer_kv(adapter, prompt.cond)
    penalized = weight * WIDTH / 1280.0
    if mode is EmbedsScaling.V_ONLY:
        term = weight * _term(q, k_ip, v_ip)
    elif mode is EmbedsScaling.K_V:
        term = _term(q, k_ip * weight, v_ip * weight)
    elif mode is EmbedsScaling.K_V_PENALTY:
        term = _term(q, k_ip * penalized, v_ip * penalized)
    else:
        mean = v_ip.mean(dim=1, keepdim=True)
        term = _term(q, k_ip * penalized, v_ip - mean + mean * penalized)
    with torch.no_grad():
        out = SlotPatch(ImageBranch(adapter, prompt, weight, embeds_scaling=mode), LAYER, sdpa_attention)(
            q, k, v, _options([0], [1.0]))
    torch.testing.assert_close(out, sdpa_attention(q, k, v, HEADS) + term, rtol=0, atol=1e-5)


def test_scaling_modes_differ_from_each_other(adapter) -> None:
    q, k, v = _qkv(2)
    outs = [SlotPatch(ImageBranch(adapter, _prompt(adapter, 1), 0.6, embeds_scaling=mode), LAYER, sdpa_attention)(
        q, k, v, _options([0], [1.0])) for mode in EmbedsScaling]
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            assert (outs[i] - outs[j]).abs().max() > 1e-4, (i, j)


def test_an_inverted_layer_gives_cond_rows_nothing_and_uncond_rows_the_reference(adapter) -> None:
    prompt = _prompt(adapter, 1)
    branch = ImageBranch(adapter, prompt, 0.8, inverted=frozenset({LAYER}))
    q, k, v = _qkv(4)  # [1, 0]: rows 0-1 uncond, rows 2-3 cond
    with torch.no_grad():
        out = SlotPatch(branch, LAYER, sdpa_attention)(q, k, v, _options([1, 0], [1.0]))
    text = sdpa_attention(q, k, v, HEADS)
    assert torch.equal(out[2:], text[2:])
    expected = text[:2] + 0.8 * _term(q[:2], *_layer_kv(adapter, prompt.cond))
    torch.testing.assert_close(out[:2], expected, rtol=0, atol=1e-5)


def test_mask_confines_the_term_per_token_and_per_latent(adapter) -> None:
    prompt = _prompt(adapter, 1)
    masks = torch.zeros(2, 8, 8)
    masks[0, :, :4] = 1.0  # latent 0: left half; latent 1: nothing
    q, k, v = _qkv(4)  # 64 tokens = an 8x8 grid; chunks [1, 0] x 2 latents
    options = {**_options([1, 0], [1.0, 1.0]), "original_shape": [2, 4, 8, 8]}
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
    branch = ImageBranch(adapter, _prompt(adapter, 1), 1.0, window=(10.0, 2.0))
    cpu = torch.device("cpu")
    sigmas = torch.tensor([5.0, 11.0])
    first = branch.gate(sigmas, 2, cpu, torch.float32)
    assert first.factor is not None and first.factor.view(-1).tolist() == [1.0, 0.0, 1.0, 0.0]
    assert branch.gate(sigmas, 2, cpu, torch.float32) is first  # every layer of the step shares it
    assert branch.gate(torch.tensor([5.0, 11.0]), 2, cpu, torch.float32) is not first  # next step: new tensor
    # CPU sigmas are read on the host: all rows in the window -> nothing to multiply; none -> skip.
    assert branch.gate(torch.tensor([5.0]), 2, cpu, torch.float32) == StepGate()
    assert branch.gate(torch.tensor([1.0]), 2, cpu, torch.float32) == StepGate(skip=True)
    assert ImageBranch(adapter, _prompt(adapter, 1), 1.0).gate(sigmas, 2, cpu, torch.float32) == StepGate()


def test_the_gate_stays_a_tensor_off_the_cpu(adapter) -> None:
    """On an accelerator the sigmas are never read back (no sync): the gate multiplies, even at 1 or 0."""
    branch = ImageBranch(adapter, _prompt(adapter, 1), 1.0, window=(10.0, 2.0))
    gate = branch.gate(torch.tensor([1.0], device="meta"), 2, torch.device("meta"), torch.float16)
    assert not gate.skip and gate.factor is not None
    assert gate.factor.device.type == "meta" and gate.factor.dtype == torch.float16


def test_the_layer_weight_is_fixed_when_the_patch_is_made(adapter) -> None:
    branch = ImageBranch(adapter, _prompt(adapter, 1), 0.5, layer_weights={LAYER: 0.4})
    assert SlotPatch(branch, LAYER, sdpa_attention).weight == pytest.approx(0.2)
