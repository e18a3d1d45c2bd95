"""Per-latent references, per-latent weights and the weight schedule in the Flux family's patch (shared machinery)."""

from __future__ import annotations

import pytest
import torch
from ipadapter_pack.ip_adapter.errors import ImagePromptError
from ipadapter_pack.ip_adapter.families.flux import DoubleBlockPatch
from ipadapter_pack.ip_adapter.loading import adapter_from_state_dict
from ipadapter_pack.ip_adapter.patch import ImageBranch
from ipadapter_pack.ip_adapter.prompt import ImagePrompt
from ipadapter_pack.ip_adapter.step_schedule import build_schedule
from support import flux_models
from test_flux_patch import BATCH, DIM, HEADS, LAYER, StandInBlock, args_for, block_inputs, prompt_for


@pytest.fixture(scope="module")
def adapter():
    return adapter_from_state_dict(flux_models.xlabs_state_dict(4, seed=5, hidden=HEADS * DIM, width=32), "v1")


def term(adapter, branch: ImageBranch, rows: list[int] | None = None, extra: dict | None = None) -> torch.Tensor:
    """The image term the patch adds to the image stream (patched minus plain block), for `rows` of the batch."""
    q_pre, pe, img, txt = block_inputs()
    if rows is not None:
        q_pre, img, txt = q_pre[rows], img[rows], txt[rows]
    block = StandInBlock(q_pre, pe)
    args = args_for(img, txt, pe)
    args["transformer_options"]["sigmas"] = args["transformer_options"]["sigmas"][: img.shape[0]]
    args["transformer_options"].update(extra or {})
    plain = block(args_for(img, txt, pe))
    with torch.no_grad():
        return DoubleBlockPatch(branch, LAYER)(args, {"original_block": block})["img"] - plain["img"]


def test_flux_latents_get_their_own_references_and_weights(adapter) -> None:
    first, second = prompt_for(adapter, 1), prompt_for(adapter, 2)
    stacked = ImagePrompt(torch.cat([first.cond, second.cond]), torch.cat([first.uncond, second.uncond]), adapter.spec)
    both = term(adapter, ImageBranch(adapter, stacked, 1.0, latent_weights=(1.0, 0.25)))
    torch.testing.assert_close(both[:1], term(adapter, ImageBranch(adapter, first, 1.0), [0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(both[1:], term(adapter, ImageBranch(adapter, second, 0.25), [1]), atol=1e-5, rtol=0)
    three = ImagePrompt(stacked.cond.repeat(2, 1, 1)[:3], stacked.uncond.repeat(2, 1, 1)[:3], adapter.spec)
    with pytest.raises(ImagePromptError, match=f"3 image prompt rows .* batch of {BATCH} latents"):
        term(adapter, ImageBranch(adapter, three, 1.0))


def test_flux_weight_follows_the_schedule(adapter) -> None:
    """Linear 1 -> 0 over percent 0..1 with sigma = 1 - percent: at sigma 0.5 (args_for's) the weight is 0.5."""
    schedule = build_schedule("linear", 1.0, 0.0, "", lambda p: 1.0 - p, 0.0, 1.0)
    prompt = prompt_for(adapter, 1)
    torch.testing.assert_close(term(adapter, ImageBranch(adapter, prompt, 1.0, schedule=schedule)),
                               term(adapter, ImageBranch(adapter, prompt, 0.5)), atol=1e-4, rtol=0)
