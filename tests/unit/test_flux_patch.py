"""The Flux double-block patch on a stand-in block: un-RoPE, the term, where it is added, stacking, wrapping."""

from __future__ import annotations

import pytest
import torch
from ipadapter_pack.ip_adapter.attention import sdpa_attention
from ipadapter_pack.ip_adapter.families.flux import OVERRIDE_KEY, DoubleBlockPatch, unrope
from ipadapter_pack.ip_adapter.loading import adapter_from_state_dict
from ipadapter_pack.ip_adapter.patch import ImageBranch
from ipadapter_pack.ip_adapter.prompt import ImagePrompt
from support import flux_models

HEADS, DIM, TXT, IMG, BATCH = 2, 32, 5, 12, 2
LAYER = 6


def rope_matrices(positions: torch.Tensor, dim: int = DIM, theta: float = 10000.0) -> torch.Tensor:
    """[L] positions -> [1, 1, L, dim/2, 2, 2] rotation matrices [[cos, -sin], [sin, cos]] (written independently)."""
    omega = theta ** -(torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angle = positions.double()[:, None] * omega[None]
    cos, sin = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2).float()[None, None]


def rotate(x: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    out = torch.einsum("...ij,...j->...i", pe, pairs)
    return out.reshape(x.shape)


@pytest.fixture(scope="module")
def adapter():
    return adapter_from_state_dict(flux_models.xlabs_state_dict(4, seed=5, hidden=HEADS * DIM, width=32), "v1")


def prompt_for(adapter, seed: int) -> ImagePrompt:
    g = torch.Generator().manual_seed(seed)
    return ImagePrompt(cond=adapter.project(torch.randn(1, 768, generator=g)),
                       uncond=adapter.project(torch.randn(1, 768, generator=g)), spec=adapter.spec)


def block_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q_pre = torch.randn(BATCH, HEADS, TXT + IMG, DIM, generator=g)
    pe = rope_matrices(torch.arange(TXT + IMG) * 3.0)
    return q_pre, pe, torch.randn(BATCH, IMG, HEADS * DIM, generator=g), torch.randn(BATCH, TXT, HEADS * DIM, generator=g)


class StandInBlock:
    """Calls the joint attention through ComfyUI's override hook with the RoPE'd q, as Flux's block does."""

    def __init__(self, q_pre: torch.Tensor, pe: torch.Tensor) -> None:
        self.q, self.calls = rotate(q_pre, pe), 0

    def __call__(self, args: dict) -> dict:
        self.calls += 1
        options = args["transformer_options"]
        k = v = self.q
        if OVERRIDE_KEY in options:
            attn = options[OVERRIDE_KEY](sdpa_attention, self.q, k, v, HEADS, skip_reshape=True,
                                         transformer_options=options)
        else:
            attn = sdpa_attention(self.q, k, v, HEADS, skip_reshape=True)
        return {"img": args["img"] + attn[:, TXT:], "txt": args["txt"] + attn[:, :TXT]}


def args_for(img, txt, pe) -> dict:
    """The block replace's args as ComfyUI's Flux passes them: one chunk of BATCH cond rows at sigma 0.5."""
    options = {"cond_or_uncond": [0], "sigmas": torch.full((BATCH,), 0.5)}
    return {"img": img.clone(), "txt": txt.clone(), "vec": None, "pe": pe, "transformer_options": options}


def expected_term(adapter, prompt, q_pre, weight: float) -> torch.Tensor:
    k, v = adapter.image_kv(prompt.cond, torch.device("cpu"), torch.float32)[LAYER]
    k = k.expand(BATCH, -1, -1).reshape(BATCH, -1, HEADS, DIM).transpose(1, 2)
    v = v.expand(BATCH, -1, -1).reshape(BATCH, -1, HEADS, DIM).transpose(1, 2)
    out = torch.nn.functional.scaled_dot_product_attention(q_pre[:, :, TXT:], k, v)
    return weight * out.transpose(1, 2).reshape(BATCH, IMG, HEADS * DIM)


def test_unrope_undoes_comfyuis_rotation() -> None:
    q_pre, pe, _, _ = block_inputs()
    torch.testing.assert_close(unrope(rotate(q_pre, pe), pe), q_pre, rtol=0, atol=1e-5)
    assert (rotate(q_pre, pe) - q_pre).abs().max() > 0.5  # the rotation is not the identity here


def test_the_term_uses_the_pre_rope_image_query_and_is_added_after_the_block(adapter) -> None:
    prompt = prompt_for(adapter, 1)
    q_pre, pe, img, txt = block_inputs()
    block = StandInBlock(q_pre, pe)
    plain = block(args_for(img, txt, pe))
    out = DoubleBlockPatch(ImageBranch(adapter, prompt, 0.7), LAYER)(args_for(img, txt, pe),
                                                                    {"original_block": block})
    assert block.calls == 2  # the block ran once for the patched call, nothing recomputed
    torch.testing.assert_close(out["img"], plain["img"] + expected_term(adapter, prompt, q_pre, 0.7), rtol=0,
                               atol=1e-5)
    assert torch.equal(out["txt"], plain["txt"])  # text stream untouched


def test_weight_zero_and_a_closed_window_return_the_block_bit_for_bit(adapter) -> None:
    prompt = prompt_for(adapter, 1)
    q_pre, pe, img, txt = block_inputs()
    block = StandInBlock(q_pre, pe)
    plain = block(args_for(img, txt, pe))
    for branch in (ImageBranch(adapter, prompt, 0.0), ImageBranch(adapter, prompt, 1.0, window=(0.3, 0.1))):
        out = DoubleBlockPatch(branch, LAYER)(args_for(img, txt, pe), {"original_block": block})
        assert torch.equal(out["img"], plain["img"]) and torch.equal(out["txt"], plain["txt"])


def test_stacked_patches_add_their_terms_and_keep_a_users_override(adapter) -> None:
    first, second = prompt_for(adapter, 1), prompt_for(adapter, 2)
    q_pre, pe, img, txt = block_inputs()
    block = StandInBlock(q_pre, pe)
    plain = block(args_for(img, txt, pe))
    seen = []

    def users_override(func, *args, **kwargs):
        seen.append(args[0].shape)
        return func(*args, **kwargs)

    inner = DoubleBlockPatch(ImageBranch(adapter, first, 0.5), LAYER)
    outer = DoubleBlockPatch(ImageBranch(adapter, second, 1.5), LAYER, previous=inner)
    args = args_for(img, txt, pe)
    args["transformer_options"][OVERRIDE_KEY] = users_override
    out = outer(args, {"original_block": block})
    expected = (plain["img"] + expected_term(adapter, first, q_pre, 0.5) + expected_term(adapter, second, q_pre, 1.5))
    torch.testing.assert_close(out["img"], expected, rtol=0, atol=1e-5)
    assert seen.count((BATCH, HEADS, TXT + IMG, DIM)) == 1  # the block's own attention: once, through the user's hook


def test_a_foreign_block_replace_is_wrapped_not_replaced(adapter) -> None:
    prompt = prompt_for(adapter, 1)
    q_pre, pe, img, txt = block_inputs()
    block = StandInBlock(q_pre, pe)
    plain = block(args_for(img, txt, pe))

    def foreign(args, extra):  # another pack's replace: runs the block it is given, then shifts the stream
        out = extra["original_block"](args)
        return {"img": out["img"] + 2.0, "txt": out["txt"]}

    out = DoubleBlockPatch(ImageBranch(adapter, prompt, 0.7), LAYER, previous=foreign)(
        args_for(img, txt, pe), {"original_block": block})
    torch.testing.assert_close(out["img"], plain["img"] + 2.0 + expected_term(adapter, prompt, q_pre, 0.7), rtol=0,
                               atol=1e-5)


def test_a_block_whose_attention_bypasses_the_hook_is_an_error_not_a_silent_no_op(adapter) -> None:
    q_pre, pe, img, txt = block_inputs()

    def bypass(args):
        return {"img": args["img"], "txt": args["txt"]}

    with pytest.raises(RuntimeError, match="double block 6 ran without its joint attention"):
        DoubleBlockPatch(ImageBranch(adapter, prompt_for(adapter, 1), 0.7), LAYER)(args_for(img, txt, pe),
                                                                                  {"original_block": bypass})


def test_to_returns_a_new_patch_only_when_the_wrapped_one_moves(adapter) -> None:
    class Moving:
        def __call__(self, args, extra):
            return extra["original_block"](args)

        def to(self, _):
            return Moving()

    branch = ImageBranch(adapter, prompt_for(adapter, 1), 0.7)
    alone = DoubleBlockPatch(branch, LAYER)
    assert alone.to(torch.device("cpu")) is alone and alone.to(torch.float16) is alone
    wrapped = DoubleBlockPatch(branch, LAYER, previous=Moving())
    moved = wrapped.to(torch.float16)
    assert moved is not wrapped and moved.previous is not wrapped.previous and moved.branch is branch
