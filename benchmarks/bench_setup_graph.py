"""Queue-to-first-step for bench_setup.py: a whole graph through ComfyUI's real executor, stopped at the first step.

The graph: value nodes (UNet, CLIP vision, one image, positive/negative conditioning),
the pack's nodes, EmptyLatentImage and KSampler (1 step, cfg 4). A forward pre-hook on the
UNet records the time of its first call and stops the prompt there, so the UNet may be of
real width with uninitialised weights (allocated, never touched: no RSS) and its step is
not timed; the step figures are `bench_ipadapter.py`'s. Before stopping, the hook does what
only our first step adds: the K/V projection of the image tokens (`ImageBranch.kv`, made
lazily on the sampling device). The other pack projects in its apply node, inside the time.
"""

from __future__ import annotations

import logging
import time

import torch
from support import comfy_harness, unets
from support.comfy_prompts import PromptRunner
from support.value_nodes import ValueNodes


class _FirstStep(Exception):
    """Raised by the hook to end the prompt at the first UNet call."""


def real_width_unet(base: str, dtype: torch.dtype, device: str):
    """A ModelPatcher around a real-width SD1.5 / SDXL UNet whose weights are allocated but never written."""
    import comfy.model_patcher
    import comfy.supported_models

    if base == "sd15":
        config = comfy.supported_models.SD15(unets.sd15_unet_config(320, dtype))
    else:
        config = comfy.supported_models.SDXL(unets.sdxl_unet_config(320, 64, dtype))
        config.unet_config["num_head_channels"] = 64
    config.set_inference_dtype(dtype, None)
    model = config.get_model({}, "", device=torch.device(device))  # comfy.ops: torch.empty, no init
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device(device),
                                            offload_device=torch.device(device))


def _prompt(side: str, file_name: str, weight: float) -> dict:
    common = {
        "1": {"class_type": "SetupBenchModel", "inputs": {}},
        "2": {"class_type": "SetupBenchClipVision", "inputs": {}},
        "3": {"class_type": "SetupBenchImage", "inputs": {}},
        "7": {"class_type": "SetupBenchPositive", "inputs": {}},
        "8": {"class_type": "SetupBenchNegative", "inputs": {}},
        "9": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "10": {"class_type": "KSampler", "inputs": {
            "model": ["6", 0], "seed": 0, "steps": 1, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["7", 0], "negative": ["8", 0], "latent_image": ["9", 0], "denoise": 1.0}},
    }
    if side == "plain":  # no adapter: the graph's own cost up to the first step
        common["10"]["inputs"]["model"] = ["1", 0]
        return common
    if side == "ours":
        nodes = {
            "4": {"class_type": "LoadIPAdapter", "inputs": {"adapter_name": file_name}},
            "5": {"class_type": "EncodeImagePrompt", "inputs": {"ip_adapter": ["4", 0], "clip_vision": ["2", 0],
                                                                 "image": ["3", 0], "fit": "center crop"}},
            "6": {"class_type": "ApplyIPAdapter", "inputs": {"model": ["1", 0], "ip_adapter": ["4", 0],
                                                              "image_prompt": ["5", 0], "weight": weight,
                                                              "start_percent": 0.0, "end_percent": 1.0}},
        }
    else:
        nodes = {
            "4": {"class_type": "IPAdapterModelLoader", "inputs": {"ipadapter_file": file_name}},
            "6": {"class_type": "IPAdapterAdvanced", "inputs": {
                "model": ["1", 0], "ipadapter": ["4", 0], "image": ["3", 0], "weight": weight,
                "weight_type": "linear", "combine_embeds": "concat", "start_at": 0.0, "end_at": 1.0,
                "embeds_scaling": "V only", "clip_vision": ["2", 0]}},
        }
    return common | nodes


def _conditioning(base: str) -> tuple[list, list]:
    g = torch.Generator().manual_seed(0)
    width = 768 if base == "sd15" else 2048
    extra = (lambda: {}) if base == "sd15" else (lambda: {"pooled_output": torch.randn(1, 1280, generator=g)})
    return ([[torch.randn(1, 77, width, generator=g), extra()]], [[torch.randn(1, 77, width, generator=g), extra()]])


def first_step_times(side: str, file_name: str, base: str, ctx: dict) -> dict:
    """Seconds from queueing to the first UNet call: fresh executor caches, then a re-queue with a new weight."""
    comfy = comfy_harness.booted()
    positive, negative = _conditioning(base)
    hits: list[float] = []

    def hook(module, args, kwargs):
        patches = kwargs.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
        ours = next((p for p in patches.values() if hasattr(p, "branch") and hasattr(p, "layer_index")), None)
        if ours is not None:  # what our first step adds: the image tokens' K/V, on the sampling device
            ours.branch.kv(ours.layer_index, args[0].device, args[0].dtype)
        hits.append(time.perf_counter())
        raise _FirstStep

    unet = ctx["unet"].model.diffusion_model
    handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
    values = {"SetupBenchModel": ("MODEL", ctx["unet"]), "SetupBenchClipVision": ("CLIP_VISION", ctx["clip"]),
              "SetupBenchImage": ("IMAGE", ctx["images"][:1]), "SetupBenchPositive": ("CONDITIONING", positive),
              "SetupBenchNegative": ("CONDITIONING", negative)}
    try:
        with ValueNodes(comfy, values):
            runner = PromptRunner()
            times, executed = [], []
            for weight in (0.8, 0.6):
                logging.disable(logging.ERROR)  # the executor logs the hook's stop as an error with a traceback
                try:
                    start = time.perf_counter()
                    result = runner.run(_prompt(side, file_name, weight), targets=["10"], raise_on_error=False)
                finally:
                    logging.disable(logging.NOTSET)
                if not hits or hits[-1] < start:
                    raise RuntimeError(f"{side}: the prompt ended before the first step: {result.error}")
                times.append(hits[-1] - start)
                executed.append([n for n in result.executed if n not in ("1", "2", "3", "7", "8", "9")])
    finally:
        handle.remove()
    comfy.model_management.unload_all_models()
    return {"queue to first step": times[0], "re-queue, weight changed": times[1],
            "re-queue executed": executed[1]}
