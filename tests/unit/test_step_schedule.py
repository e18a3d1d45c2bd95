"""The weight schedule over the steps: curves across the window, a per-step list, no host read, constant untouched."""

from __future__ import annotations

import pytest
import torch
from ipadapter_pack.ip_adapter.attention import sdpa_attention
from ipadapter_pack.ip_adapter.errors import ImagePromptError
from ipadapter_pack.ip_adapter.families.unet import SlotPatch
from ipadapter_pack.ip_adapter.model import IPAdapterModel
from ipadapter_pack.ip_adapter.patch import ImageBranch
from ipadapter_pack.ip_adapter.step_schedule import (
    CURVES,
    build_schedule,
    curve,
    interpolate,
    sigma_table,
    stretch,
)
from support.patch_inputs import LAYER, options_for, prompt_for, qkv, small_sd15_adapter


def percent_to_sigma(percent: float) -> float:
    """A stand-in model schedule: sigma 10 at percent 0, falling linearly to 0 at percent 1."""
    return 10.0 * (1.0 - percent)


@pytest.fixture(scope="module")
def adapter() -> IPAdapterModel:
    return small_sd15_adapter()


def run(adapter, weight: float, schedule, sigma: float, extra: dict | None = None) -> torch.Tensor:
    branch = ImageBranch(adapter, prompt_for(adapter, 1), weight, schedule=schedule)
    q, k, v = qkv(2)
    with torch.no_grad():
        return SlotPatch(branch, LAYER, sdpa_attention)(q, k, v, {**options_for([1, 0], [sigma]), **(extra or {})})


def test_constant_is_no_schedule_at_all() -> None:
    """'constant' builds nothing, so the branch runs today's code path unchanged (bit for bit)."""
    assert build_schedule("constant", 0.7, 0.1, "", percent_to_sigma, 0.0, 1.0) is None


def test_curve_shapes_at_their_ends_and_middle() -> None:
    t = torch.tensor([0.0, 0.5, 1.0])
    assert curve("linear", t).tolist() == [0.0, 0.5, 1.0]
    assert curve("ease in", t).tolist() == [0.0, 0.25, 1.0]
    assert curve("ease out", t).tolist() == [0.0, 0.75, 1.0]
    assert curve("ease in-out", t).tolist() == [0.0, 0.5, 1.0]
    with pytest.raises(ImagePromptError, match="unknown curve"):
        curve("wobble", t)


def test_the_sigma_table_maps_the_window_onto_t() -> None:
    sigmas, t = sigma_table(percent_to_sigma, 0.2, 0.6)
    got = interpolate(torch.tensor([8.0, 6.0, 4.0], dtype=torch.float64), sigmas, t)
    torch.testing.assert_close(got, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64), atol=1e-3, rtol=0)


@pytest.mark.parametrize("name", CURVES)
def test_a_curve_gives_the_term_of_its_weight_at_that_step(adapter, name) -> None:
    """Linear 1 -> 0.2 over the whole schedule: at sigma 5 (t = 0.5) the output equals a constant run at w(0.5)."""
    schedule = build_schedule(name, 1.0, 0.2, "", percent_to_sigma, 0.0, 1.0)
    expected_weight = 1.0 + (0.2 - 1.0) * float(curve(name, torch.tensor(0.5)))
    torch.testing.assert_close(run(adapter, 1.0, schedule, 5.0), run(adapter, expected_weight, None, 5.0),
                               atol=2e-5, rtol=0)


def test_start_equal_to_end_matches_the_constant_weight(adapter) -> None:
    schedule = build_schedule("ease in-out", 0.7, 0.7, "", percent_to_sigma, 0.0, 1.0)
    torch.testing.assert_close(run(adapter, 0.7, schedule, 3.0), run(adapter, 0.7, None, 3.0), atol=1e-6, rtol=0)


def test_the_per_step_list_picks_the_step_of_the_sigma(adapter) -> None:
    sample_sigmas = torch.tensor([9.0, 7.0, 5.0, 3.0, 0.0])
    schedule = build_schedule("per step list", 1.0, 1.0, "1, 0.5, 0.25, 0", percent_to_sigma, 0.0, 1.0)
    for sigma, weight in ((9.0, 1.0), (7.0, 0.5), (5.0, 0.25), (3.0, 0.0)):
        got = run(adapter, 1.0, schedule, sigma, {"sample_sigmas": sample_sigmas})
        torch.testing.assert_close(got, run(adapter, weight, None, sigma), atol=1e-6, rtol=0)


def test_a_list_of_another_length_is_stretched_over_the_steps() -> None:
    assert stretch([1.0, 0.0], 5) == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert stretch([0.3, 0.2, 0.1], 3) == [0.3, 0.2, 0.1]
    assert stretch([0.4], 3) == [0.4, 0.4, 0.4]


def test_per_step_list_errors_are_named(adapter) -> None:
    with pytest.raises(ImagePromptError, match="step_weights.*empty"):
        build_schedule("per step list", 1.0, 1.0, " ", percent_to_sigma, 0.0, 1.0)
    with pytest.raises(ImagePromptError, match="item 2 'x'"):
        build_schedule("per step list", 1.0, 1.0, "1, x", percent_to_sigma, 0.0, 1.0)
    schedule = build_schedule("per step list", 1.0, 1.0, "1, 0.5", percent_to_sigma, 0.0, 1.0)
    with pytest.raises(ImagePromptError, match="sample_sigmas"):
        run(adapter, 1.0, schedule, 5.0)


@pytest.mark.parametrize("name", ["linear", "per step list"])
def test_the_schedule_reads_nothing_back_from_the_device(adapter, name) -> None:
    """On `meta` tensors any host read raises: the schedule (with per-latent weights) is pure device work."""
    schedule = build_schedule(name, 1.0, 0.3, "1, 0.6, 0.2", percent_to_sigma, 0.1, 0.9)
    meta = torch.device("meta")
    branch = ImageBranch(adapter, prompt_for(adapter, 1), 1.0, window=(9.0, 1.0), schedule=schedule,
                         latent_weights=(1.0, 0.5))
    patch = SlotPatch(branch, LAYER, sdpa_attention)
    q, k, v = (t.to(device=meta, dtype=torch.float16) for t in qkv(4))
    with torch.inference_mode():
        for sigma in (8.0, 5.0, 2.0):
            options = {**options_for([1, 0], [sigma, sigma]), "sigmas": torch.tensor([sigma, sigma], device=meta),
                       "sample_sigmas": torch.tensor([8.0, 5.0, 2.0, 0.0], device=meta)}
            out = patch(q, k, v, options)
            assert out.device == meta and out.shape == q.shape


def test_the_factor_is_computed_once_per_step(adapter) -> None:
    schedule = build_schedule("linear", 1.0, 0.0, "", percent_to_sigma, 0.0, 1.0)
    sigmas = torch.tensor([5.0])
    first = schedule.factor(sigmas, {}, 2, torch.device("cpu"), torch.float32)
    assert schedule.factor(sigmas, {}, 2, torch.device("cpu"), torch.float32) is first
    torch.testing.assert_close(first.view(-1), torch.tensor([0.5, 0.5]), atol=1e-3, rtol=0)
