"""Where a patched UNet step spends its extra time: torch ops added per layer, and Python hot spots.

Run from the repository root (CPU is enough; tiny widths make fixed per-call costs visible):

    python benchmarks/profile_step.py                 # SD1.5 topology, latent 16, model_channels 32
    python benchmarks/profile_step.py --base sdxl --top 25

Prints (1) the torch operators one UNet step runs, plain vs patched (one base adapter, whole
schedule; and with a schedule window), as a per-layer difference: each operator is a kernel
launch on a GPU, so this count does not depend on how busy the machine is; (2) a cProfile of
patched steps, limited to functions of this pack and of ComfyUI's attention module.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
from collections import Counter
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from bench_timing import step_inputs
from support import checkpoints, comfy_harness, unets
from support.comfy_clip import tiny_comfy_clip_vision


def op_counts(model, step, device: str) -> Counter:
    """aten operators of one step (after a warm-up step), by name."""
    step(model, device)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step(model, device)
    return Counter(e.name for e in prof.events() if e.name.startswith("aten::"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", choices=("sd15", "sdxl"), default="sd15")
    parser.add_argument("--latent", type=int, default=16)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="patched steps under cProfile")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    comfy = comfy_harness.boot_comfyui(comfy_harness.find_comfyui(), ("--cpu",))
    comfy_harness.load_pack(REPO, comfy)
    folder = Path(comfy.folder_paths.get_temp_directory()) / "ip_adapter_profile"
    folder.mkdir(parents=True, exist_ok=True)
    comfy.folder_paths.add_model_folder_path("ipadapter", str(folder), is_default=True)
    variant = "ip-adapter_sd15" if args.base == "sd15" else "ip-adapter_sdxl_vit-h"
    name = f"profile_{variant}_{args.channels}.safetensors"
    checkpoints.save_safetensors(checkpoints.state_dict_for_unet_width(variant, args.channels), folder / name)
    build = unets.comfy_sd15_model if args.base == "sd15" else unets.comfy_sdxl_model
    plain = build(seed=0, model_channels=args.channels)
    (adapter,) = comfy_harness.run_node("LoadIPAdapter", adapter_name=name)
    clip_vision = tiny_comfy_clip_vision(folder, hidden=64, projection_dim=checkpoints.expected(variant)["clip_dim"])
    (prompt,) = comfy_harness.run_node("EncodeImagePrompt", ip_adapter=adapter, clip_vision=clip_vision,
                                       image=torch.rand(1, 224, 224, 3), fit="center crop")

    def apply(end: float):
        return comfy_harness.run_node("ApplyIPAdapter", model=plain, ip_adapter=adapter, image_prompt=prompt,
                                      weight=0.8, start_percent=0.0, end_percent=end)[0]

    variants = {"plain": plain, "whole schedule": apply(1.0), "with a window": apply(0.9)}
    comfy.model_management.load_models_gpu(list(variants.values()))
    step = step_inputs(plain, args.base, args.latent, "cpu", torch.float32)
    layers = len(unets.SD15_ATTN2_SLOTS if args.base == "sd15" else unets.SDXL_ATTN2_SLOTS)
    base_ops = op_counts(plain, step, "cpu")
    print(f"{args.base}, latent {args.latent}, model_channels {args.channels}: {sum(base_ops.values())} aten ops "
          f"per plain step; {layers} patched layers")
    for label in ("whole schedule", "with a window"):
        ops = op_counts(variants[label], step, "cpu")
        extra = {k: ops[k] - base_ops.get(k, 0) for k in ops if ops[k] != base_ops.get(k, 0)}
        print(f"\npatched, {label}: {sum(ops.values()) - sum(base_ops.values())} extra aten ops per step "
              f"= {(sum(ops.values()) - sum(base_ops.values())) / layers:.1f} per layer")
        for k, n in sorted(extra.items(), key=lambda kv: -kv[1]):
            print(f"  {k:40} {n:+5d}  ({n / layers:+.2f} per layer)")

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(args.steps):
        step(variants["with a window"], "cpu")
    profiler.disable()
    print(f"\ncProfile, {args.steps} patched steps (window), functions of the pack and of ComfyUI attention:")
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(r"ip_adapter|attention\.py", args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
