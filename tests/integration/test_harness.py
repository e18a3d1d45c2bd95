"""The test harness itself: tiny UNets, the ComfyUI/diffusers twins, attn2 slots, node running.

Pack-independent except ``test_pack_loads_through_load_custom_node``.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from support import comfy_harness, comfy_prompts, diffusers_twin, unets

LATENT = 16  # 16x16 latent = 128 px
BATCH = 2
TIMESTEP = 500


def _inputs(kind: str, model_patcher, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    context_dim = 768 if kind == "sd15" else 2048
    sigma = unets.sigma_for_timestep(model_patcher, TIMESTEP)
    x = torch.randn(BATCH, 4, LATENT, LATENT, generator=g) * sigma
    context = torch.randn(BATCH, 77, context_dim, generator=g)
    pooled = torch.randn(BATCH, 1280, generator=g) if kind == "sdxl" else None
    return x, sigma, context, pooled


@pytest.fixture(scope="module")
def sd15(comfy_runtime):
    return unets.comfy_sd15_model(seed=0)


@pytest.fixture(scope="module")
def sdxl(comfy_runtime):
    return unets.comfy_sdxl_model(seed=0)


def _model(kind, sd15, sdxl):
    return sd15 if kind == "sd15" else sdxl


# ---------------------------------------------------------------------------------- topology

def test_tiny_models_have_the_real_attn2_layers(sd15, sdxl):
    def attn2_layers(mp):
        return [n for n, _ in mp.model.diffusion_model.named_modules() if n.endswith(".attn2")]

    assert len(attn2_layers(sd15)) == 16
    assert len(attn2_layers(sdxl)) == 70
    assert type(sd15.model).__name__ == "BaseModel"
    assert type(sdxl.model).__name__ == "SDXL"
    for mp in (sd15, sdxl):
        assert mp.load_device == torch.device("cpu") and mp.offload_device == torch.device("cpu")
        assert all(torch.isfinite(p).all() for p in mp.model.diffusion_model.parameters())


def test_timestep_matches_sigma(sd15):
    sigma = unets.sigma_for_timestep(sd15, TIMESTEP)
    assert unets.timestep_for_sigma(sd15, sigma) == TIMESTEP


# ------------------------------------------------------------------- (a) ComfyUI == diffusers

@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_comfy_and_diffusers_twin_agree(kind, sd15, sdxl):
    mp = _model(kind, sd15, sdxl)
    twin = diffusers_twin.diffusers_twin(mp)
    x, sigma, context, pooled = _inputs(kind, mp)

    eps_comfy = unets.comfy_eps(mp, x, sigma, context, pooled)
    added = None
    if kind == "sdxl":  # ComfyUI's default size conditioning: the latent size * 8
        added = diffusers_twin.sdxl_added_cond_kwargs(pooled, LATENT * 8, LATENT * 8)
    t = unets.timestep_for_sigma(mp, sigma)
    eps_diffusers = diffusers_twin.diffusers_eps(twin, x, t, context, added, sigma=sigma)

    assert eps_comfy.shape == x.shape
    assert torch.isfinite(eps_comfy).all()
    assert 0.1 < eps_comfy.std().item() < 10.0, "noise prediction should be O(1)"
    assert (eps_comfy - eps_diffusers).abs().max().item() < 1e-4
    # the weights matter: another seed gives another prediction
    other = unets.comfy_sd15_model(seed=1) if kind == "sd15" else unets.comfy_sdxl_model(seed=1)
    assert (unets.comfy_eps(other, x, sigma, context, pooled) - eps_comfy).abs().max() > 1e-2


# ------------------------------------------------------- (b) every attn2 slot, exactly once

class RecordingAttn2:
    """An attn2 replace patch that records where it was called and computes plain attention."""

    def __init__(self):
        self.calls: list[tuple[str, int, int]] = []

    def __call__(self, q, k, v, extra_options):
        from comfy.ldm.modules.attention import optimized_attention

        self.calls.append(unets.attn2_call_key(extra_options))
        return optimized_attention(q, k, v, extra_options["n_heads"])


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_attn2_replace_hits_every_slot_once(kind, sd15, sdxl):
    mp = _model(kind, sd15, sdxl)
    slots = unets.SD15_ATTN2_SLOTS if kind == "sd15" else unets.SDXL_ATTN2_SLOTS
    patched = mp.clone()
    recorder = RecordingAttn2()
    for slot in slots:
        if kind == "sd15":
            block, number = slot
            patched.set_model_attn2_replace(recorder, block, number)
        else:
            block, number, index = slot
            patched.set_model_attn2_replace(recorder, block, number, transformer_index=index)
    registered = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert set(registered) == set(slots)
    assert "patches_replace" not in mp.model_options.get("transformer_options", {})

    x, sigma, context, pooled = _inputs(kind, mp)
    eps_patched = unets.comfy_eps(patched, x, sigma, context, pooled)

    expected = [s if len(s) == 3 else (*s, 0) for s in slots]
    counts = Counter(recorder.calls)
    assert len(counts) == len(slots) == (16 if kind == "sd15" else 70)
    assert all(n == 1 for n in counts.values()), counts
    assert recorder.calls == expected, "slots are called in ComfyUI's execution order"

    # A patch that recomputes plain attention changes nothing: it runs on the real path.
    eps_plain = unets.comfy_eps(mp, x, sigma, context, pooled)
    assert (eps_patched - eps_plain).abs().max().item() < 1e-5


def test_middle_block_is_keyed_middle_0(sd15):
    """A patch keyed ("middle", 1) is never called (the trap in REFERENCE)."""
    patched = sd15.clone()
    wrong, right = RecordingAttn2(), RecordingAttn2()
    patched.set_model_attn2_replace(wrong, "middle", 1)
    patched.set_model_attn2_replace(right, "middle", 0)
    x, sigma, context, _ = _inputs("sd15", sd15)
    unets.comfy_eps(patched, x, sigma, context)
    assert wrong.calls == [] and right.calls == [("middle", 0, 0)]


def test_cfg_batches_cond_and_uncond_through_each_slot(sd15):
    """With cfg != 1 the uncond pass runs too; every slot still sees every row once."""
    patched = sd15.clone()
    rows = Counter()

    def patch(q, k, v, extra_options):
        from comfy.ldm.modules.attention import optimized_attention

        rows[unets.attn2_call_key(extra_options)] += q.shape[0]
        return optimized_attention(q, k, v, extra_options["n_heads"])

    for block, number in unets.SD15_ATTN2_SLOTS:
        patched.set_model_attn2_replace(patch, block, number)
    x, sigma, context, _ = _inputs("sd15", sd15)
    eps = unets.comfy_eps(patched, x, sigma, context, negative=torch.zeros_like(context), cfg=5.0)
    assert torch.isfinite(eps).all()
    assert set(rows.values()) == {2 * BATCH}
    assert len(rows) == 16


# -------------------------------------------------------------- running nodes and prompts

def test_run_node_v1_and_v3(comfy_runtime):
    (latent,) = comfy_harness.run_node("EmptyLatentImage", width=64, height=64, batch_size=2)
    assert latent["samples"].shape == (2, 4, 8, 8)
    comfy_runtime.load_builtin_extras(["nodes_latent.py"])  # LatentAdd is a V3 io.ComfyNode
    (summed,) = comfy_harness.run_node("LatentAdd", samples1=latent, samples2=latent)
    assert summed["samples"].shape == (2, 4, 8, 8)


def test_run_prompt_uses_the_executor_cache(comfy_runtime):
    comfy_runtime.load_builtin_extras(["nodes_latent.py"])
    prompt = {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "2": {"class_type": "LatentAdd", "inputs": {"samples1": ["1", 0], "samples2": ["1", 0]}},
    }
    runner = comfy_prompts.PromptRunner()
    first = runner.run(prompt, targets=["2"])
    assert first.executed == ["1", "2"] and first.cached == []
    assert first.output("2")["samples"].shape == (1, 4, 8, 8)
    second = runner.run(prompt, targets=["2"])
    assert second.executed == [] and sorted(second.cached) == ["1", "2"]

    changed = {**prompt, "1": {**prompt["1"], "inputs": {**prompt["1"]["inputs"], "width": 128}}}
    third = runner.run(changed, targets=["2"])
    assert third.executed == ["1", "2"]

    with pytest.raises(comfy_harness.PromptValidationError, match="width"):
        runner.run({"1": {**prompt["1"], "inputs": {**prompt["1"]["inputs"], "width": 1}}}, targets=["1"])


def test_model_dirs_are_seen_by_folder_paths(comfy_runtime, model_dirs):
    fp = comfy_runtime.folder_paths
    (model_dirs["clip_vision"] / "tiny.safetensors").write_bytes(b"")
    (model_dirs["ipadapter"] / "tiny.safetensors").write_bytes(b"")
    assert "tiny.safetensors" in fp.get_filename_list("clip_vision")
    assert "tiny.safetensors" in fp.get_filename_list("ipadapter")
    assert fp.get_full_path("clip_vision", "tiny.safetensors") == str(model_dirs["clip_vision"] / "tiny.safetensors")


# ------------------------------------------------------------------------ (c) the pack loads

def test_pack_loads_through_load_custom_node(comfy_runtime):
    init = comfy_harness.REPO_ROOT / "__init__.py"
    if not init.is_file():
        pytest.skip(f"{init} does not exist yet: nothing to load")
    pack = comfy_harness.load_pack(comfy_harness.REPO_ROOT, comfy_runtime)
    assert pack.node_ids
    for node_id in pack.node_ids:
        cls = comfy_runtime.nodes.NODE_CLASS_MAPPINGS[node_id]
        assert pack.node(node_id) is cls
        assert cls.RELATIVE_PYTHON_MODULE == f"custom_nodes.{comfy_harness.REPO_ROOT.name}"
    assert not set(pack.node_ids) & comfy_runtime.builtin_node_ids


def test_a_pack_that_fails_to_import_raises_with_comfys_reason(comfy_runtime, tmp_path):
    broken = tmp_path / "broken_pack"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('missing dependency xyz-123')\n")
    with pytest.raises(comfy_harness.PackImportError, match="xyz-123"):
        comfy_harness.load_pack(broken, comfy_runtime)
