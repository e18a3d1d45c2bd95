"""The SD3.5 patch adds exactly the adapter's own work: no host projection is computed twice.

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` (matrix products and
attention) over one ComfyUI forward. Patched minus unpatched must equal, exactly, one
resampler pass (counted on its own) plus, per joint block: norm_ip's Linear, the K/V
projections of the image tokens, and the attention of the L image queries over L + Q keys.
Re-running any of the block's own projections (qkv, proj, MLP) would add to the difference.
"""

from __future__ import annotations

import pytest
import torch
from sd35_case import DEPTH, SIGMA, build
from torch.utils.flop_counter import FlopCounterMode


@pytest.fixture(scope="module")
def case(comfy, tmp_path_factory):
    import folder_paths

    folder = tmp_path_factory.mktemp("sd35_cost")
    (folder / "ipadapter").mkdir()
    folder_paths.add_model_folder_path("ipadapter", str(folder / "ipadapter"), is_default=True)
    folder_paths.filename_list_cache.pop("ipadapter", None)
    return build({"ipadapter": folder / "ipadapter"}, folder, name="sd35-cost.safetensors")


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_patched_block_costs_host_plus_image_attention(case) -> None:
    prompt = case.encode()
    patched = case.apply(prompt)
    plain_flops = _flops(lambda: case.predict(case.model, cfg=1.0))
    patched_flops = _flops(lambda: case.predict(patched, cfg=1.0))

    shape = case.adapter.model.shape
    features = prompt.cond
    resampler = _flops(lambda: case.adapter.model.tokens(features, torch.tensor([SIGMA * 1000.0])))
    rows, image_tokens, hidden = 1, (case.x.shape[-2] // 2) * (case.x.shape[-1] // 2), shape.hidden_size
    per_block = (2 * rows * shape.resampler_dim * 2 * shape.token_dim            # norm_ip Linear
                 + 2 * 2 * rows * shape.tokens * shape.token_dim * hidden         # to_k_ip, to_v_ip
                 + 4 * rows * image_tokens * (image_tokens + shape.tokens) * hidden)  # Q K^T and A V
    extra = patched_flops - plain_flops
    print(f"\nSD3.5 FLOPs: host {plain_flops}, extra {extra} = resampler {resampler} + {DEPTH} x {per_block}")
    assert extra == resampler + DEPTH * per_block
