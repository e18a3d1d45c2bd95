"""Adapter memory under ComfyUI's model management: shared storage, load/offload with the UNet, no leaks.

The other ComfyUI memory flags (--lowvram, --novram, --disable-smart-memory) are read once at
boot, so they are checked in a child process: see `test_low_memory_flags.py`.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from support import checkpoints, unets
from support.comfy_clip import tiny_comfy_clip_vision
from support.comfy_harness import run_node


@pytest.fixture(scope="module")
def clip_vision(comfy, tmp_path_factory):
    return tiny_comfy_clip_vision(tmp_path_factory.mktemp("clip"), hidden=1280, projection_dim=1024, seed=1)


def _adapter_and_prompt(model_dirs, clip_vision, variant: str = "ip-adapter-plus_sd15"):
    path = checkpoints.save_safetensors(checkpoints.ip_adapter_state_dict(variant, "small", seed=2),
                                        model_dirs["ipadapter"] / f"mm-{variant}.safetensors")
    (adapter,) = run_node("LoadIPAdapter", adapter_name=path.name)
    (prompt,) = run_node("EncodeImagePrompt", ip_adapter=adapter, clip_vision=clip_vision,
                         image=torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0)),
                         fit="center crop")
    return adapter, prompt


def _apply(model, adapter, prompt, weight: float = 0.8):
    (patched,) = run_node("ApplyIPAdapter", model=model, ip_adapter=adapter, image_prompt=prompt, weight=weight,
                          start_percent=0.0, end_percent=1.0)
    return patched


def _step(model) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    context = torch.randn(2, 1, 77, 768, generator=g)
    x = torch.randn(1, 4, 16, 16, generator=g)
    return unets.comfy_eps(model, x, unets.sigma_for_timestep(model, 500), context[0], None,
                           negative=context[1], cfg=3.0)


def _slot_patches(model) -> list:
    """Every SlotPatch registered on `model`, wrapped ones (stacked applies) included."""
    found = []
    for patch in model.model_options["transformer_options"]["patches_replace"]["attn2"].values():
        while patch is not None:
            found.append(patch)
            patch = getattr(patch, "previous", None)
    return found


def _pointers(module: torch.nn.Module) -> set[int]:
    return {p.data_ptr() for p in module.parameters()}


def _kv_pointers(patches) -> set[int]:
    return {t.data_ptr() for p in patches for layer in p.branch.cache.kv.values() for kv in layer.values() for t in kv}


def _loaded(mm) -> list:
    """The ModelPatchers in ComfyUI's loaded-model list."""
    return [entry.model for entry in mm.current_loaded_models]


def test_applies_and_clones_share_the_adapter_weights_and_cached_kv(comfy, model_dirs, clip_vision) -> None:
    sd15 = unets.comfy_sd15_model(seed=3)
    adapter, prompt = _adapter_and_prompt(model_dirs, clip_vision)
    weights = _pointers(adapter.model)
    first = _apply(sd15, adapter, prompt)
    second = _apply(sd15, adapter, prompt, weight=0.5)
    stacked = _apply(first, adapter, prompt, weight=0.3)
    for model, count in ((first, 16), (second, 16), (stacked, 32)):
        patches = _slot_patches(model)
        assert len(patches) == count
        assert {id(p.branch.adapter) for p in patches} == {id(adapter.model)}  # one module, never copied
        assert all(_pointers(p.branch.adapter) == weights for p in patches)
        assert {id(m) for p in patches for m in p.models()} == {id(adapter.patcher)}  # one ModelPatcher

    _step(first)
    kv = _kv_pointers(_slot_patches(first))
    assert kv  # the image K/V of every layer is cached after one step
    clone = first.clone()
    assert [id(p) for p in _slot_patches(clone)] == [id(p) for p in _slot_patches(first)]  # not deep-copied
    _step(clone)
    _step(first)
    assert _kv_pointers(_slot_patches(clone)) == kv  # same storage, nothing re-projected by the clone or a step
    assert _pointers(adapter.model) == weights


def test_adapter_weights_load_and_unload_with_the_unet(comfy, model_dirs, clip_vision) -> None:
    mm = comfy.model_management
    mm.unload_all_models()
    sd15 = unets.comfy_sd15_model(seed=3)
    adapter, prompt = _adapter_and_prompt(model_dirs, clip_vision)
    mm.unload_all_models()  # EncodeImagePrompt loaded the adapter for the projection; start from nothing
    assert adapter.patcher not in _loaded(mm) and adapter.patcher.loaded_size() == 0
    patched = _apply(sd15, adapter, prompt)
    assert adapter.patcher not in _loaded(mm)  # applying loads nothing by itself

    mm.load_models_gpu([patched])  # what KSampler does with its model
    loaded = _loaded(mm)
    assert patched in loaded and adapter.patcher in loaded
    assert adapter.patcher.loaded_size() == adapter.patcher.model_size() > 0
    assert adapter.patcher.current_loaded_device() == mm.get_torch_device()
    assert all(p.device == mm.get_torch_device() for p in adapter.model.parameters())

    mm.unload_all_models()
    assert patched not in _loaded(mm) and adapter.patcher not in _loaded(mm)
    assert adapter.patcher.loaded_size() == 0
    assert all(p.device == adapter.patcher.offload_device for p in adapter.model.parameters())


def test_ksampler_loads_the_adapter_with_the_unet(comfy, model_dirs, clip_vision) -> None:
    mm = comfy.model_management
    mm.unload_all_models()
    adapter, prompt = _adapter_and_prompt(model_dirs, clip_vision, "ip-adapter_sd15")
    mm.unload_all_models()
    patched = _apply(unets.comfy_sd15_model(seed=3), adapter, prompt)
    g = torch.Generator().manual_seed(1)
    positive, negative = ([[torch.randn(1, 77, 768, generator=g), {}]] for _ in range(2))
    run_node("KSampler", model=patched, seed=5, steps=2, cfg=4.0, sampler_name="euler", scheduler="normal",
             positive=positive, negative=negative, latent_image={"samples": torch.zeros(1, 4, 16, 16)}, denoise=1.0)
    assert adapter.patcher in _loaded(mm) and adapter.patcher.loaded_size() > 0
    mm.unload_all_models()
    assert adapter.patcher not in _loaded(mm)


def test_nothing_keeps_a_dropped_adapter_alive(comfy, model_dirs, clip_vision) -> None:
    """After the graph lets go and ComfyUI unloads, the adapter, its patcher and the branch are freed."""
    mm = comfy.model_management
    sd15 = unets.comfy_sd15_model(seed=3)  # stays alive, as a cached checkpoint does on a server
    adapter, prompt = _adapter_and_prompt(model_dirs, clip_vision)
    patched = _apply(_apply(sd15, adapter, prompt), adapter, prompt, weight=0.4)
    mm.load_models_gpu([patched])
    _step(patched)  # fills the K/V and row caches
    branch = _slot_patches(patched)[0].branch
    refs = {"IPAdapterModel": weakref.ref(adapter.model), "adapter ModelPatcher": weakref.ref(adapter.patcher),
            "ImageBranch": weakref.ref(branch), "ImagePrompt": weakref.ref(prompt),
            "patched ModelPatcher": weakref.ref(patched)}
    del adapter, prompt, patched, branch
    mm.unload_all_models()
    mm.cleanup_models()
    gc.collect()
    alive = [name for name, ref in refs.items() if ref() is not None]
    assert alive == [], f"still referenced: {alive}"
    assert sd15.model.current_patcher is None
