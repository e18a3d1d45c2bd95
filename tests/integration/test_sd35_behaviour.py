"""SD3.5 patch behaviour on ComfyUI's own MMDiT: hits per block, invariants, stacking, composition, masks.

Each test can fail: counts are per registered block, equalities are exact where the
patch must leave numbers untouched (weight 0, empty window, zero mask).
"""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
from sd35_case import DEPTH, build

DIT = ("transformer_options", "patches_replace", "dit")


@pytest.fixture(scope="module")
def case(comfy, tmp_path_factory):
    import folder_paths

    folder = tmp_path_factory.mktemp("sd35_models")
    (folder / "ipadapter").mkdir()
    folder_paths.add_model_folder_path("ipadapter", str(folder / "ipadapter"), is_default=True)
    folder_paths.filename_list_cache.pop("ipadapter", None)
    return build({"ipadapter": folder / "ipadapter"}, folder, name="sd35-behaviour.safetensors")


@pytest.fixture(scope="module")
def prompt(case):
    return case.encode()


def _dit(model) -> dict:
    options = model.model_options
    for key in DIT:
        options = options.get(key, {})
    return options


def test_every_joint_block_fires_once_per_forward(case, prompt, monkeypatch) -> None:
    patched = case.apply(prompt)
    patches = _dit(patched)
    assert sorted(patches) == [("double_block", i) for i in range(DEPTH)]
    cls = type(next(iter(patches.values())))
    hits: Counter = Counter()
    original = cls.add_term

    def counting(self, *args, **kwargs):
        hits[self.index] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "add_term", counting)
    case.predict(patched, cfg=1.0)  # one forward (cond only)
    assert hits == {i: 1 for i in range(DEPTH)}
    branch = patches[("double_block", 0)].branch
    assert branch.cache.resampler_runs == 1  # tokens made once per step, not per block
    case.predict(patched, cfg=3.0)  # cond and uncond: two forwards (different text lengths)
    assert hits == {i: 3 for i in range(DEPTH)}
    assert branch.cache.resampler_runs == 3


def test_weight_zero_and_empty_window_are_bit_identical(case, prompt) -> None:
    plain = case.predict(case.model)
    zero = case.apply(prompt, weight=0.0)
    assert not _dit(zero)
    assert torch.equal(case.predict(zero), plain)
    outside = case.apply(prompt, start_percent=0.0, end_percent=0.05)  # sigma 0.6 is later than 5 %
    assert _dit(outside)
    assert torch.equal(case.predict(outside), plain)
    skipped = case.apply(prompt, layer_weights="0, 0, 0")
    assert torch.equal(case.predict(skipped), plain)


def test_input_model_untouched(case, prompt) -> None:
    before = copy.deepcopy(case.model.model_options)
    plain = case.predict(case.model)
    case.predict(case.apply(prompt))
    assert case.model.model_options == before
    assert torch.equal(case.predict(case.model), plain)


def test_stacking_adds_terms(case, prompt) -> None:
    twice = case.apply(prompt, weight=0.4, model=case.apply(prompt, weight=0.4))
    once = case.apply(prompt, weight=0.8)
    assert (case.predict(twice) - case.predict(once)).abs().max() < 1e-5
    with_zero = case.apply(prompt, weight=0.0, model=case.apply(prompt, weight=0.8))
    assert torch.equal(case.predict(with_zero), case.predict(once))


def test_wraps_a_foreign_block_patch(case, prompt) -> None:
    calls: Counter = Counter()

    def foreign(args, extra):
        calls[id(args["img"])] += 1
        return extra["original_block"](args)

    clone = case.model.clone()
    for i in range(DEPTH):
        clone.set_model_patch_replace(foreign, "dit", "double_block", i)
    patched = case.apply(prompt, model=clone)
    ours_alone = case.predict(case.apply(prompt))
    result = case.predict(patched, cfg=1.0)
    assert sum(calls.values()) == DEPTH  # the other pack's patch still runs in every block
    assert (case.predict(patched) - ours_alone).abs().max() < 1e-6
    assert not torch.equal(result, case.predict(clone, cfg=1.0))


def test_mask_confines_the_term(case, prompt) -> None:
    plain, full = case.predict(case.model), case.predict(case.apply(prompt))
    ones = case.predict(case.apply(prompt, attn_mask=torch.ones(1, 64, 64)))
    zeros = case.predict(case.apply(prompt, attn_mask=torch.zeros(1, 64, 64)))
    assert (ones - full).abs().max() < 1e-6
    assert torch.equal(zeros, plain)
    half = torch.zeros(1, 64, 64)
    half[:, :, :32] = 1.0
    left = case.predict(case.apply(prompt, attn_mask=half))
    assert (left - plain).abs().max() > 1e-2 and (left - full).abs().max() > 1e-2


def test_several_images_lie_side_by_side(case, prompt) -> None:
    images = torch.rand(2, 200, 240, 3, generator=torch.Generator().manual_seed(9))
    two = case.encode(image=images)
    assert two.cond.shape[0] == 2
    patched = case.apply(two)
    branch = _dit(patched)[("double_block", 0)].branch
    tokens, _ = branch.tokens(torch.tensor([0.6]), (0,), 1)
    assert tokens.shape[1] == 2 * case.adapter.model.shape.tokens
    out = case.predict(patched)
    assert torch.isfinite(out).all() and (out - case.predict(case.apply(prompt))).abs().max() > 1e-3
    averaged = case.encode(image=images, combine_embeds="average")
    assert averaged.cond.shape[0] == 1
