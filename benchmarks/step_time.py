"""IP-Adapter overhead inside a real ComfyUI: UNet step time patched vs unpatched, memory, load, encode.

Run from the repository root:

    python benchmarks/step_time.py            # CPU: small widths and latents (says so)
    python benchmarks/step_time.py --device cuda --json results.json   # real widths, fp16

What is timed: one UNet forward through ComfyUI's `BaseModel.apply_model` with cond
and uncond batched (`cond_or_uncond = [1, 0]`, as KSampler with cfg > 1 sends it),
using the ModelPatcher's transformer options, so the registered attn2 patches run
exactly as in sampling. Variants are interleaved (plain, +1 adapter, +3 adapters,
plain, ...) and each reported figure is a median with its min-max spread.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # test builders; never the repo root (it would shadow ComfyUI's nodes/utils)

from support import checkpoints, comfy_harness, unets  # noqa: E402
from support.comfy_clip import tiny_comfy_clip_vision  # noqa: E402

TARGET_OVERHEAD = {"cuda": 1.0, "cpu": 1.5}  # percent


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _forward(model, x, sigma, context, pooled, device: str) -> float:
    options = dict(model.model_options["transformer_options"])
    options["cond_or_uncond"] = [1, 0]
    options["sigmas"] = sigma
    extra = {}
    if pooled is not None:
        extra["y"] = model.model.encode_adm(pooled_output=pooled, width=x.shape[3] * 8, height=x.shape[2] * 8,
                                            device=x.device)
    _sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        model.model.apply_model(x, sigma, c_crossattn=context, transformer_options=options, **extra)
    _sync(device)
    return time.perf_counter() - start


def _summary(times: list[float]) -> dict:
    return {"median_ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3, "max_ms": max(times) * 1e3}


def bench_topology(base: str, variant: str, args, folder: Path) -> dict:
    device, dtype = args.device, (torch.float16 if args.device == "cuda" else torch.float32)
    channels = 320 if device == "cuda" else args.cpu_channels
    size = "full" if channels == 320 else "small"
    latent = (64 if base == "sd15" else 128) if device == "cuda" else args.cpu_latent
    build = unets.comfy_sd15_model if base == "sd15" else unets.comfy_sdxl_model
    model = build(seed=0, model_channels=channels, dtype=dtype, device=device)
    comfy_harness.booted().model_management.load_models_gpu([model])

    path = checkpoints.save_safetensors(checkpoints.ip_adapter_state_dict(variant, size, dtype=torch.float16),
                                        folder / f"{variant}.safetensors")
    start = time.perf_counter()
    (adapter,) = comfy_harness.run_node("LoadIPAdapter", adapter_name=path.name)
    load_s = time.perf_counter() - start

    facts = checkpoints.expected(variant)
    widths = ({"hidden": 1280, "projection_dim": facts["clip_dim"]} if facts["feature"] == "image_embeds"
              else {"hidden": facts["clip_dim"], "projection_dim": 1024})
    clip_vision = tiny_comfy_clip_vision(folder, **widths)
    images = torch.rand(8, 256, 256, 3)
    run = lambda: comfy_harness.run_node("EncodeImagePrompt", ip_adapter=adapter, clip_vision=clip_vision,  # noqa: E731
                                         image=images, fit="center crop")
    run()
    start = time.perf_counter()
    (prompt,) = run()
    encode_ips = images.shape[0] / (time.perf_counter() - start)

    patched = {0: model}
    current = model
    for count in (1, 2, 3):
        (current,) = comfy_harness.run_node("ApplyIPAdapter", model=current, ip_adapter=adapter, image_prompt=prompt,
                                            weight=0.8, start_percent=0.0, end_percent=1.0)
        patched[count] = current
    for variant_model in patched.values():
        variant_model.model_patches_to(model.load_device)
        variant_model.model_patches_to(model.model_dtype())
        comfy_harness.booted().model_management.load_models_gpu([variant_model])

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, latent, latent, generator=g).to(device, dtype)
    context = torch.randn(2, 77, 768 if base == "sd15" else 2048, generator=g).to(device, dtype)
    pooled = torch.randn(2, 1280, generator=g).to(device, dtype) if base == "sdxl" else None
    sigma = torch.full((2,), unets.sigma_for_timestep(model, 500), device=device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times: dict[int, list[float]] = {k: [] for k in (0, 1, 3)}
    for _ in range(args.warmup):
        for k in times:
            _forward(patched[k], x, sigma, context, pooled, device)
    for _ in range(args.repeats):
        for k in times:
            times[k].append(_forward(patched[k], x, sigma, context, pooled, device))
    plain = statistics.median(times[0])
    result = {
        "base": base, "variant": variant, "device": device, "dtype": str(dtype).replace("torch.", ""),
        "model_channels": channels, "latent": latent, "pixels": latent * 8,
        "adapter_load_s": load_s, "encode_images_per_s": encode_ips,
        "plain": _summary(times[0]),
    }
    for k in (1, 3):
        result[f"adapters_{k}"] = {**_summary(times[k]),
                                   "overhead_pct": (statistics.median(times[k]) / plain - 1.0) * 100}
    result["peak_memory_mb"] = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
                                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return result


def other_packs(comfy_path: Path) -> list[str]:
    """IP-Adapter packs installed beside this one in the same ComfyUI (measured if present: not yet)."""
    custom = comfy_path / "custom_nodes"
    return sorted(p.name for p in custom.iterdir() if "ipadapter" in p.name.lower().replace("-", "").replace("_", "")
                  and p.resolve() != REPO) if custom.is_dir() else []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--cpu-channels", type=int, default=32, choices=(32, 320),
                        help="UNet model_channels on CPU (real: 320; the small test adapters fit 32)")
    parser.add_argument("--cpu-latent", type=int, default=64, help="latent side on CPU (512 px = 64)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    path = comfy_harness.find_comfyui()
    if path is None:
        print(comfy_harness.COMFYUI_NOT_FOUND, file=sys.stderr)
        return 2
    argv = ("--cpu",) if args.device == "cpu" else ()
    comfy = comfy_harness.boot_comfyui(path, argv)
    comfy_harness.load_pack(REPO, comfy)
    folder = Path(comfy.folder_paths.get_temp_directory()) / "ip_adapter_bench"
    folder.mkdir(parents=True, exist_ok=True)
    comfy.folder_paths.add_model_folder_path("ipadapter", str(folder), is_default=True)

    if args.device == "cpu":
        print(f"CPU run: small UNet widths (model_channels={args.cpu_channels}) and {args.cpu_latent}x{args.cpu_latent} "
              "latents; GPU figures need --device cuda.")
    others = other_packs(path)
    print("other IP-Adapter packs: " + (", ".join(others) + " (not measured yet)" if others
                                        else "no other IP-Adapter pack installed"))
    results = [bench_topology(base, variant, args, folder)
               for base, variant in (("sd15", "ip-adapter_sd15"), ("sd15", "ip-adapter-plus_sd15"),
                                     ("sdxl", "ip-adapter_sdxl_vit-h"), ("sdxl", "ip-adapter-plus_sdxl_vit-h"))]
    target = TARGET_OVERHEAD[args.device]
    header = (f"{'model':5} {'adapter':28} {'px':>5} {'plain ms':>17} {'+1 ms':>17} {'+1 %':>6} {'+3 ms':>17} "
              f"{'+3 %':>6} {'load s':>6} {'enc img/s':>9} {'peak MB':>8}")
    print(header)
    print("-" * len(header))
    for r in results:
        cell = lambda s: f"{s['median_ms']:7.2f} [{s['min_ms']:.1f}-{s['max_ms']:.1f}]"  # noqa: E731
        print(f"{r['base']:5} {r['variant']:28} {r['pixels']:5} {cell(r['plain']):>17} {cell(r['adapters_1']):>17} "
              f"{r['adapters_1']['overhead_pct']:6.2f} {cell(r['adapters_3']):>17} {r['adapters_3']['overhead_pct']:6.2f} "
              f"{r['adapter_load_s']:6.2f} {r['encode_images_per_s']:9.1f} {r['peak_memory_mb']:8.0f}")
    print(f"target: +1 adapter overhead within {target}% ({args.device}); "
          "the image branch itself costs 0.04-0.44% of the UNet's FLOPs (REFERENCE.md)")
    if args.json:
        args.json.write_text(json.dumps({"machine": platform.platform(), "torch": torch.__version__,
                                         "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
