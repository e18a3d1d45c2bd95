"""Child process for tests of ComfyUI's memory flags: one prompt through the real executor, as JSON.

ComfyUI reads --lowvram / --novram / --disable-smart-memory once, when
`comfy.model_management` is imported, and a test session boots ComfyUI once; so each flag
gets its own process. Run from `tests/`:

    python -m support.model_management_probe OUT_DIR --cpu --disable-smart-memory

It queues LoadIPAdapter -> EncodeImagePrompt -> ApplyIPAdapter -> KSampler (tiny random
models handed in through `ValueNodes`) and prints one JSON line: ComfyUI's memory state, the
loaded-model list while the UNet runs (a forward pre-hook on the UNet module), after the
prompt, and after `unload_all_models`; and which of the adapter, its ModelPatcher, the image
branch, the image prompt and the patched model are still alive once the executor's cache and
ComfyUI's loaded-model list let go (weak references, after `gc.collect()`).
"""

from __future__ import annotations

import gc
import json
import sys
import weakref
from pathlib import Path

import torch

from . import checkpoints, comfy_harness, unets
from .comfy_clip import tiny_comfy_clip_vision
from .comfy_prompts import PromptRunner
from .value_nodes import ValueNodes

PROMPT = {
    "1": {"class_type": "ProbeModel", "inputs": {}},
    "2": {"class_type": "ProbeClipVision", "inputs": {}},
    "3": {"class_type": "ProbeImage", "inputs": {}},
    "4": {"class_type": "LoadIPAdapter", "inputs": {"adapter_name": "probe.safetensors"}},
    "5": {"class_type": "EncodeImagePrompt",
          "inputs": {"ip_adapter": ["4", 0], "clip_vision": ["2", 0], "image": ["3", 0], "fit": "center crop"}},
    "6": {"class_type": "ApplyIPAdapter",
          "inputs": {"model": ["1", 0], "ip_adapter": ["4", 0], "image_prompt": ["5", 0], "weight": 0.8,
                     "start_percent": 0.0, "end_percent": 1.0}},
    "7": {"class_type": "KSampler",
          "inputs": {"model": ["6", 0], "seed": 1, "steps": 2, "cfg": 4.0, "sampler_name": "euler",
                     "scheduler": "normal", "positive": ["8", 0], "negative": ["9", 0], "latent_image": ["10", 0],
                     "denoise": 1.0}},
    "8": {"class_type": "ProbePositive", "inputs": {}},
    "9": {"class_type": "ProbeNegative", "inputs": {}},
    "10": {"class_type": "ProbeLatent", "inputs": {}},
}


def _state(mm, ids: dict[str, int], patcher) -> dict:
    loaded = [entry.model for entry in mm.current_loaded_models]
    return {"loaded": sorted(name for name, i in ids.items() if any(id(m) == i for m in loaded)),
            "adapter_loaded_bytes": patcher.loaded_size(), "adapter_size_bytes": patcher.model_size(),
            "adapter_devices": sorted({str(p.device) for p in patcher.model.parameters()})}


def run(out_dir: Path, comfy_args: list[str]) -> dict:
    comfy = comfy_harness.boot_comfyui(None, comfy_args)
    for name, setter in (("output", comfy.folder_paths.set_output_directory),
                         ("temp", comfy.folder_paths.set_temp_directory)):
        (out_dir / name).mkdir(parents=True, exist_ok=True)
        setter(str(out_dir / name))
    comfy_harness.load_pack()
    (out_dir / "ipadapter").mkdir(exist_ok=True)
    comfy.folder_paths.add_model_folder_path("ipadapter", str(out_dir / "ipadapter"), is_default=True)
    checkpoints.save_safetensors(checkpoints.ip_adapter_state_dict("ip-adapter-plus_sd15", "small"),
                                 out_dir / "ipadapter" / "probe.safetensors")
    mm = comfy.model_management
    unet = unets.comfy_sd15_model(seed=3)
    # As a checkpoint loader would: load to ComfyUI's device, offload where ComfyUI says.
    unet.load_device, unet.offload_device = mm.get_torch_device(), mm.unet_offload_device()
    g = torch.Generator().manual_seed(0)
    during: list[dict[int, list[str]]] = []  # per UNet call: loaded ModelPatcher id -> its weights' devices

    def record(*_: object) -> None:
        during.append({id(entry.model): sorted({str(p.device) for p in entry.model.model.parameters()})
                       for entry in mm.current_loaded_models})

    hook = unet.model.diffusion_model.register_forward_pre_hook(record)
    values = {"ProbeModel": ("MODEL", unet),
              "ProbeClipVision": ("CLIP_VISION", tiny_comfy_clip_vision(out_dir, hidden=1280, projection_dim=1024)),
              "ProbeImage": ("IMAGE", torch.rand(1, 64, 64, 3, generator=g)),
              "ProbePositive": ("CONDITIONING", [[torch.randn(1, 77, 768, generator=g), {}]]),
              "ProbeNegative": ("CONDITIONING", [[torch.randn(1, 77, 768, generator=g), {}]]),
              "ProbeLatent": ("LATENT", {"samples": torch.zeros(1, 4, 16, 16)})}
    with ValueNodes(comfy_harness.booted(), values):
        runner = PromptRunner()
        result = runner.run(PROMPT, targets=["7"])
        adapter, patched = result.output("4"), result.output("6")
        patches = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
        branch = next(iter(patches.values())).branch
        ids = {"adapter": id(adapter.patcher), "patched_unet": id(patched)}
        report = {
            "adapter_devices_during_sampling": during[0].get(ids["adapter"]),
            "vram_state": mm.vram_state.name, "disable_smart_memory": bool(mm.DISABLE_SMART_MEMORY),
            "load_device": str(mm.get_torch_device()), "unet_calls": len(during),
            "during_sampling": sorted(name for name, i in ids.items() if i in during[0]),
            "after_prompt": _state(mm, ids, adapter.patcher),
        }
        mm.unload_all_models()
        report["after_unload_all_models"] = _state(mm, ids, adapter.patcher)
        refs = {"IPAdapterModel": weakref.ref(adapter.model), "adapter ModelPatcher": weakref.ref(adapter.patcher),
                "ImageBranch": weakref.ref(branch), "ImagePrompt": weakref.ref(result.output("5")),
                "patched ModelPatcher": weakref.ref(patched)}
        del adapter, patched, patches, branch, result, runner
    hook.remove()
    mm.cleanup_models()
    gc.collect()
    report["alive_after_release"] = [name for name, ref in refs.items() if ref() is not None]
    return report


if __name__ == "__main__":
    print(json.dumps(run(Path(sys.argv[1]), sys.argv[2:])))
