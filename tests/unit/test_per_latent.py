"""One reference per latent: rows per latent, a batch of 1 for all, counts refused by name, context windows, weights."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from ipadapter_pack.ip_adapter.attention import sdpa_attention
from ipadapter_pack.ip_adapter.errors import ImagePromptError
from ipadapter_pack.ip_adapter.families.unet import SlotPatch
from ipadapter_pack.ip_adapter.model import IPAdapterModel
from ipadapter_pack.ip_adapter.patch import ImageBranch
from ipadapter_pack.ip_adapter.per_latent import latent_indices, parse_latent_weights
from ipadapter_pack.ip_adapter.prompt import ImagePrompt
from support.patch_inputs import LAYER, options_for, prompt_for, qkv, small_sd15_adapter


@pytest.fixture(scope="module")
def adapter() -> IPAdapterModel:
    return small_sd15_adapter()


def stacked(adapter: IPAdapterModel, seeds: list[int]) -> ImagePrompt:
    """One reference per latent: the prompts of `seeds`, one row each."""
    prompts = [prompt_for(adapter, seed) for seed in seeds]
    return ImagePrompt(torch.cat([p.cond for p in prompts]), torch.cat([p.uncond for p in prompts]), adapter.spec)


def apply(adapter, prompt, q, k, v, options, **branch) -> torch.Tensor:
    with torch.no_grad():
        return SlotPatch(ImageBranch(adapter, prompt, 0.8, **branch), LAYER, sdpa_attention)(q, k, v, options)


def rows_of(t: torch.Tensor, chunks: int, batch: int, latents: list[int]) -> torch.Tensor:
    """The q rows of `latents` in every chunk of a [chunks * batch, ...] tensor."""
    return torch.cat([t[c * batch + i: c * batch + i + 1] for c in range(chunks) for i in latents])


def test_each_latent_gets_its_own_reference_cond_and_uncond(adapter) -> None:
    q, k, v = qkv(6)  # uncond, cond chunks of 3 latents
    out = apply(adapter, stacked(adapter, [1, 2, 3]), q, k, v, options_for([1, 0], [1.0, 1.0, 1.0]))
    for latent, seed in enumerate([1, 2, 3]):
        alone = apply(adapter, prompt_for(adapter, seed), *(rows_of(t, 2, 3, [latent]) for t in (q, k, v)),
                      options_for([1, 0], [1.0]))
        torch.testing.assert_close(rows_of(out, 2, 3, [latent]), alone, atol=1e-6, rtol=0)


def test_other_counts_are_refused_by_name(adapter) -> None:
    q, k, v = qkv(4)
    with pytest.raises(ImagePromptError, match="3 image prompt rows .* batch of 2 latents"):
        apply(adapter, stacked(adapter, [1, 2, 3]), q, k, v, options_for([1, 0], [1.0, 1.0]))


def test_a_context_window_gets_the_references_and_masks_of_its_frames(adapter) -> None:
    """The windowed call on frames [1, 3] of 4 equals an unwindowed run on those frames' references and masks."""
    masks = torch.zeros(4, 8, 8)
    for frame in range(4):
        masks[frame, :, : 2 * (frame + 1)] = 1.0
    prompt = stacked(adapter, [1, 2, 3, 4])
    q, k, v = qkv(4, seed=3)  # two chunks of the window's 2 frames
    window = SimpleNamespace(index_list=[1, 3], dim=0, total_frames=4)
    base = {**options_for([1, 0], [1.0, 1.0]), "original_shape": [2, 4, 8, 8]}
    windowed = apply(adapter, prompt, q, k, v, {**base, "context_window": window}, mask=masks,
                     latent_weights=(1.0, 0.5, 0.7, 0.25))
    plain = apply(adapter, stacked(adapter, [2, 4]), q, k, v, base, mask=masks[[1, 3]], latent_weights=(0.5, 0.25))
    # Equal up to float rounding: the K/V of 4 rows vs 2 rows go through differently blocked matmuls.
    torch.testing.assert_close(windowed, plain, atol=1e-6, rtol=0)


def test_a_window_over_another_dimension_is_not_a_frame_pick() -> None:
    window = SimpleNamespace(index_list=[0, 1], dim=2, total_frames=4)
    with pytest.raises(ImagePromptError, match="4 masks"):
        latent_indices(4, 2, {"context_window": window}, "masks")
    assert latent_indices(1, 2, {"context_window": window}, "masks") is None


def test_per_latent_weights_scale_each_latent(adapter) -> None:
    q, k, v = qkv(4)
    prompt = prompt_for(adapter, 1)
    options = options_for([1, 0], [1.0, 1.0])
    weighted = apply(adapter, prompt, q, k, v, options, latent_weights=(1.0, 0.25))
    full = apply(adapter, prompt, q, k, v, options)
    with torch.no_grad():
        text = sdpa_attention(q, k, v, 8)
    torch.testing.assert_close(rows_of(weighted, 2, 2, [0]), rows_of(full, 2, 2, [0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(rows_of(weighted - text, 2, 2, [1]), 0.25 * rows_of(full - text, 2, 2, [1]),
                               atol=1e-5, rtol=0)
    with pytest.raises(ImagePromptError, match="3 per-latent weights for a batch of 2"):
        apply(adapter, prompt, q, k, v, options, latent_weights=(1.0, 0.5, 0.2))


def test_latent_weights_come_from_text_or_a_float_list() -> None:
    assert parse_latent_weights("1, 0.5;0.25") == (1.0, 0.5, 0.25)
    assert parse_latent_weights("") is None
    assert parse_latent_weights("1", [0.2, 0.4]) == (0.2, 0.4)
    assert parse_latent_weights(None, 0.3) == (0.3,)
    assert parse_latent_weights(None, torch.tensor([0.5, 1.0])) == (0.5, 1.0)
    with pytest.raises(ImagePromptError, match="item 2 is 'a'"):
        parse_latent_weights(None, [1.0, "a"])
    with pytest.raises(ImagePromptError, match="item 1 'x'"):
        parse_latent_weights("x")


def test_a_window_projects_only_its_frames_references(adapter) -> None:
    """K/V memory follows the window: the other frames' references are never projected."""
    branch = ImageBranch(adapter, stacked(adapter, [1, 2, 3, 4, 5, 6]), 1.0)
    q, k, v = qkv(4)
    window = SimpleNamespace(index_list=[2, 3], dim=0, total_frames=6)
    with torch.no_grad():
        SlotPatch(branch, LAYER, sdpa_attention)(q, k, v, {**options_for([1, 0], [1.0, 1.0]), "context_window": window})
    assert branch.cache.kv == {}
    (layout,) = branch.cache.window_kv.held_layouts()
    assert layout[2] == (2, 3)
    k_cond = branch.kv(LAYER, torch.device("cpu"), torch.float32, (2, 3))[0]
    assert k_cond.shape[0] == 2
