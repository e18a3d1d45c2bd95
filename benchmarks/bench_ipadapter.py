"""IP-Adapter cost inside a real ComfyUI: UNet step time patched vs unpatched, memory, load, encode.

Run from the repository root:

    python benchmarks/bench_ipadapter.py --quick                 # CPU, < 3 min on 2 cores
    python benchmarks/bench_ipadapter.py --device cpu --json cpu.json
    python benchmarks/bench_ipadapter.py --device cuda --json cuda.json   # real widths, fp16

What is timed ("step"): one UNet forward through ComfyUI's `BaseModel.apply_model` (the call
`calc_cond_batch` makes during KSampler sampling) with cond and uncond batched in one call
(`cond_or_uncond = [1, 0]`, batch 2, as with cfg > 1), using the ModelPatcher's own
`transformer_options`, so the registered attn2 replace patches run exactly as in sampling. The
ModelPatchers are loaded first (`load_models_gpu`, which also loads the adapter weights through
the patches' `models()`), so no load/offload and no sampler bookkeeping is inside the timing.
Variants are interleaved round by round (plain, base x1, base x3, plus x1, plus x3, plain, ...);
figures are medians with the min-max spread, overhead = median(patched) / median(plain) - 1.
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
# Test builders only; never the repo root (its nodes/ and utils/ would shadow ComfyUI's).
sys.path.insert(0, str(REPO / "tests"))

from support import checkpoints, comfy_harness, unets
from support.comfy_clip import tiny_comfy_clip_vision

TARGET_OVERHEAD_PCT = {"cuda": 1.0, "cpu": 1.5}
ADAPTERS = {
    "sd15": {"base": "ip-adapter_sd15", "plus": "ip-adapter-plus_sd15"},
    "sdxl": {"base": "ip-adapter_sdxl_vit-h", "plus": "ip-adapter-plus_sdxl_vit-h"},
}
STACKS = (1, 3)


# --------------------------------------------------------------------------------------------
# measuring helpers
# --------------------------------------------------------------------------------------------

def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    """Start a new high-water mark (CUDA allocator, or the process RSS via /proc/self/clear_refs)."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return
    try:  # Linux: "5" resets the RSS high-water mark that getrusage reports
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # the figure is then the process-lifetime high-water mark


def _peak_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def _summary(times: list[float]) -> dict:
    return {"median_ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3,
            "max_ms": max(times) * 1e3, "runs": len(times)}


class Step:
    """One UNet call as `calc_cond_batch` makes it, for a loaded ModelPatcher."""

    def __init__(self, x, sigma, context, pooled):
        self.x, self.sigma, self.context, self.pooled = x, sigma, context, pooled

    def __call__(self, model, device: str) -> tuple[float, torch.Tensor]:
        options = dict(model.model_options.get("transformer_options", {}))
        options["cond_or_uncond"] = [1, 0]
        options["sigmas"] = self.sigma
        extra = {}
        if self.pooled is not None:
            x = self.x
            extra["y"] = model.model.encode_adm(pooled_output=self.pooled, width=x.shape[3] * 8,
                                                height=x.shape[2] * 8, device=x.device)
        _sync(device)
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.model.apply_model(self.x, self.sigma, c_crossattn=self.context,
                                          transformer_options=options, **extra)
        _sync(device)
        return time.perf_counter() - start, out


def _step_inputs(model, base: str, latent: int, device: str, dtype: torch.dtype) -> "Step":
    """One fixed cond+uncond batch (x, sigma, text context, SDXL pooled) shared by every timed variant."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, latent, latent, generator=g).to(device, dtype)
    context = torch.randn(2, 77, checkpoints.CROSS_ATTENTION_DIM[base], generator=g).to(device, dtype)
    pooled = torch.randn(2, 1280, generator=g).to(device, dtype) if base == "sdxl" else None
    sigma = torch.full((2,), unets.sigma_for_timestep(model, 500), device=device)
    return Step(x, sigma, context, pooled)


def _interleaved(models: dict[str, object], step: Step, device: str, warmup: int, repeats: int) -> dict:
    """Time every model once per round, rounds repeated; also the peak memory of one call each."""
    outputs = {}
    for _ in range(warmup):
        for name, m in models.items():
            outputs[name] = step(m, device)[1]
    plain = outputs["plain"].float()
    changed = {name: float((o.float() - plain).abs().max()) for name, o in outputs.items() if name != "plain"}
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, m in models.items():
            times[name].append(step(m, device)[0])
    peaks = {}
    for name, m in models.items():
        _reset_peak(device)
        step(m, device)
        peaks[name] = _peak_mb(device)
    plain_med = statistics.median(times["plain"])
    result = {}
    for name, t in times.items():
        row = {**_summary(t), "peak_memory_mb": peaks[name]}
        if name != "plain":
            row["overhead_pct"] = (statistics.median(t) / plain_med - 1.0) * 100
            # Per-round ratios cancel slow drifts (thermal, other processes) that medians keep.
            row["paired_overhead_pct"] = (statistics.median(
                p / q for p, q in zip(t, times["plain"])) - 1.0) * 100
            row["max_abs_change_vs_plain"] = changed[name]
        result[name] = row
    return result


# --------------------------------------------------------------------------------------------
# one topology
# --------------------------------------------------------------------------------------------

def _clip_vision(device: str, folder: Path, base: str, kind: str, cache: dict):
    """The CLIP vision model EncodeImagePrompt uses: full random ViT-H on CUDA, tiny on CPU."""
    if device == "cuda":
        if "vit-h" not in cache:
            import comfy.clip_vision
            from support.clip_vision_files import write_clip_vision_vit_h

            path = folder / "random_vit_h.safetensors"
            if not path.exists():
                write_clip_vision_vit_h(path)
            cache["vit-h"] = comfy.clip_vision.load(str(path))
        return cache["vit-h"]
    facts = checkpoints.expected(ADAPTERS[base][kind])
    widths = ({"hidden": 64, "projection_dim": facts["clip_dim"]} if facts["feature"] == "image_embeds"
              else {"hidden": facts["clip_dim"], "projection_dim": 1024})
    key = tuple(widths.values())
    if key not in cache:
        cache[key] = tiny_comfy_clip_vision(folder, **widths)
    return cache[key]


def bench_topology(base: str, latent: int, channels: int, args, folder: Path, clip_cache: dict) -> dict:
    device = args.device
    dtype = torch.float16 if device == "cuda" else torch.float32
    size = "full" if channels == 320 else "small"
    mm = comfy_harness.booted().model_management
    build = unets.comfy_sd15_model if base == "sd15" else unets.comfy_sdxl_model
    model = build(seed=0, model_channels=channels, dtype=dtype, device=device)
    mm.load_models_gpu([model])

    loads, encodes, prompts, adapters = {}, {}, {}, {}
    for kind, variant in ADAPTERS[base].items():
        name = f"bench_{variant}_{size}.safetensors"
        path = folder / name
        if not path.exists():
            checkpoints.save_safetensors(checkpoints.ip_adapter_state_dict(variant, size, dtype=torch.float16), path)
        comfy_harness.run_node("LoadIPAdapter", adapter_name=name)  # warm the file cache / imports
        start = time.perf_counter()
        (adapters[kind],) = comfy_harness.run_node("LoadIPAdapter", adapter_name=name)
        loads[kind] = time.perf_counter() - start

        clip_vision = _clip_vision(device, folder, base, kind, clip_cache)
        images = torch.rand(args.encode_images, 256, 256, 3, generator=torch.Generator().manual_seed(1))

        def encode(adapter=adapters[kind], clip_vision=clip_vision, images=images):
            return comfy_harness.run_node("EncodeImagePrompt", ip_adapter=adapter, clip_vision=clip_vision,
                                          image=images, fit="center crop")

        encode()
        _sync(device)
        start = time.perf_counter()
        (prompts[kind],) = encode()
        _sync(device)
        encodes[kind] = images.shape[0] / (time.perf_counter() - start)

    models = {"plain": model}
    for kind in ADAPTERS[base]:
        current = model
        for count in range(1, max(STACKS) + 1):
            (current,) = comfy_harness.run_node(
                "ApplyIPAdapter", model=current, ip_adapter=adapters[kind], image_prompt=prompts[kind],
                weight=0.8, start_percent=0.0, end_percent=1.0)
            if count in STACKS:
                models[f"{kind} x{count}"] = current
    for m in models.values():
        mm.load_models_gpu([m])  # also loads the adapters (patch.models()) as sampling would

    step = _step_inputs(model, base, latent, device, dtype)
    timings = _interleaved(models, step, device, args.warmup, args.repeats)

    mm.unload_all_models()
    mm.soft_empty_cache()
    return {
        "base": base, "device": device, "dtype": str(dtype).replace("torch.", ""), "model_channels": channels,
        "latent": latent, "pixels": latent * 8, "batch": "cond+uncond (2)", "adapter_size": size,
        "adapters": ADAPTERS[base],
        "adapter_load_s": loads, "encode_images_per_s": encodes, "encode_batch": args.encode_images,
        "clip_vision": "random ViT-H/14 (full size)" if device == "cuda" else "tiny random CLIP vision (2 layers)",
        "step": timings,
    }


# --------------------------------------------------------------------------------------------
# another IP-Adapter pack in the same ComfyUI
# --------------------------------------------------------------------------------------------

def other_packs(comfy_path: Path) -> list[Path]:
    """IP-Adapter packs installed beside this one in `custom_nodes/` (by folder name)."""
    custom = comfy_path / "custom_nodes"
    if not custom.is_dir():
        return []
    found = []
    for p in sorted(custom.iterdir()):
        squashed = p.name.lower().replace("-", "").replace("_", "")
        if p.is_dir() and "ipadapter" in squashed and p.resolve() != REPO:
            found.append(p)
    return found


def bench_other_pack(pack: Path, base: str, latent: int, channels: int, args, folder: Path, clip_cache: dict) -> dict:
    """Best effort for cubiq's ComfyUI_IPAdapter_plus (node ids IPAdapterModelLoader/IPAdapterAdvanced).

    Same UNet, same checkpoints, same step; only the patching nodes differ. Unknown packs are
    named but not measured.
    """
    import asyncio

    comfy = comfy_harness.booted()
    ok = asyncio.run(comfy.nodes.load_custom_node(str(pack), ignore=set(comfy.builtin_node_ids),
                                                  module_parent="custom_nodes"))
    mapping = comfy.nodes.NODE_CLASS_MAPPINGS
    if not ok or "IPAdapterModelLoader" not in mapping or "IPAdapterAdvanced" not in mapping:
        return {"pack": pack.name, "measured": False, "why": "not ComfyUI_IPAdapter_plus's node API"}
    device = args.device
    dtype = torch.float16 if device == "cuda" else torch.float32
    size = "full" if channels == 320 else "small"
    mm = comfy.model_management
    build = unets.comfy_sd15_model if base == "sd15" else unets.comfy_sdxl_model
    model = build(seed=0, model_channels=channels, dtype=dtype, device=device)
    mm.load_models_gpu([model])
    comfy.folder_paths.add_model_folder_path("ipadapter", str(folder), is_default=True)
    models, loads = {"plain": model}, {}
    images = torch.rand(1, 256, 256, 3, generator=torch.Generator().manual_seed(1))
    for kind, variant in ADAPTERS[base].items():
        name = f"bench_{variant}_{size}.safetensors"
        start = time.perf_counter()
        (ipadapter,) = comfy_harness.run_node("IPAdapterModelLoader", ipadapter_file=name)
        loads[kind] = time.perf_counter() - start
        clip_vision = _clip_vision(device, folder, base, kind, clip_cache)
        current = model
        for count in range(1, max(STACKS) + 1):
            (current,) = comfy_harness.run_node(
                "IPAdapterAdvanced", model=current, ipadapter=ipadapter, image=images, weight=0.8,
                weight_type="linear", combine_embeds="concat", start_at=0.0, end_at=1.0,
                embeds_scaling="V only", clip_vision=clip_vision)
            if count in STACKS:
                models[f"{kind} x{count}"] = current
    for m in models.values():
        mm.load_models_gpu([m])
    step = _step_inputs(model, base, latent, device, dtype)
    timings = _interleaved(models, step, device, args.warmup, args.repeats)
    mm.unload_all_models()
    return {"pack": pack.name, "measured": True, "base": base, "latent": latent, "model_channels": channels,
            "adapter_load_s": loads, "step": timings}


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------

def _cell(s: dict) -> str:
    return f"{s['median_ms']:8.2f} [{s['min_ms']:.1f}-{s['max_ms']:.1f}]"


def print_table(results: list[dict], device: str, largest: dict[str, int]) -> None:
    target = TARGET_OVERHEAD_PCT[device]
    header = (f"{'model':5} {'px':>5} {'ch':>4} {'variant':9} {'step ms median [min-max]':>26} {'overhead':>9} "
              f"{'paired':>7} {'target':>8} {'peak MB':>8}")
    print(header)
    print("-" * len(header))
    for r in results:
        judged = device == "cuda" or r["latent"] == largest[r["base"]]
        for name, s in r["step"].items():
            if name == "plain":
                over, paired, verdict = "", "", ""
            else:
                over, paired = f"{s['overhead_pct']:+8.2f}%", f"{s['paired_overhead_pct']:+6.2f}%"
                ok = s["overhead_pct"] <= target
                verdict = (f"<={target}% {'ok' if ok else 'MISS'}" if judged else "(n/a)")
            print(f"{r['base']:5} {r['pixels']:5} {r['model_channels']:4} {name:9} {_cell(s):>26} {over:>9} "
                  f"{paired:>7} {verdict:>8} {s['peak_memory_mb']:8.1f}")
        print(f"{'':5} load LoadIPAdapter: base {r['adapter_load_s']['base'] * 1e3:.1f} ms, "
              f"plus {r['adapter_load_s']['plus'] * 1e3:.1f} ms ({r['adapter_size']} checkpoints); "
              f"EncodeImagePrompt: base {r['encode_images_per_s']['base']:.1f} img/s, "
              f"plus {r['encode_images_per_s']['plus']:.1f} img/s (batch {r['encode_batch']}, {r['clip_vision']})")
    print(f"target: overhead within {target}% on {device}"
          + (" fp16 at real size" if device == "cuda" else " at the largest CPU size (rows marked (n/a) are smaller)"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats (CPU: under ~3 min on 2 cores)")
    parser.add_argument("--repeats", type=int, help="timed rounds per size (default 25, quick 9)")
    parser.add_argument("--warmup", type=int, help="untimed rounds per size (default 3, quick 2)")
    parser.add_argument("--cpu-latents", type=int, nargs="+",
                        help="latent sides on CPU (default and quick: 16 32); the largest is where the target applies. "
                             "48 or 64 take minutes per round on 2 cores")
    parser.add_argument("--encode-images", type=int, help="images per EncodeImagePrompt call (default 8, quick 4)")
    parser.add_argument("--comfy-arg", action="append", default=[], metavar="FLAG",
                        help="extra ComfyUI command-line flag, e.g. --comfy-arg=--use-pytorch-cross-attention "
                             "(repeatable; changes the attention backend both branches use)")
    parser.add_argument("--json", type=Path, help="write all results here")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA device")
    args.repeats = args.repeats or (9 if args.quick else 25)
    args.warmup = args.warmup or (2 if args.quick else 3)
    args.encode_images = args.encode_images or (4 if args.quick else 8)

    comfy_path = comfy_harness.find_comfyui()
    if comfy_path is None:
        print(comfy_harness.COMFYUI_NOT_FOUND, file=sys.stderr)
        return 2
    comfy = comfy_harness.boot_comfyui(
        comfy_path, (("--cpu",) if args.device == "cpu" else ()) + tuple(args.comfy_arg))
    import comfy.ldm.modules.attention as comfy_attention

    backend = comfy_attention.optimized_attention.__name__
    print(f"ComfyUI {comfy_path} booted with {['--cpu'] if args.device == 'cpu' else []}{args.comfy_arg}; "
          f"attention backend (text and image branch): {backend}")
    comfy_harness.load_pack(REPO, comfy)
    folder = Path(comfy.folder_paths.get_temp_directory()) / "ip_adapter_bench"
    folder.mkdir(parents=True, exist_ok=True)
    comfy.folder_paths.add_model_folder_path("ipadapter", str(folder), is_default=True)

    if args.device == "cuda":
        sizes = [("sd15", 64, 320), ("sdxl", 128, 320)]
        print(f"CUDA run on {torch.cuda.get_device_name()}: real widths (model_channels=320), fp16, "
              "512 px SD1.5 / 1024 px SDXL, full-size adapters, full-size random ViT-H.")
    else:
        latents = sorted(args.cpu_latents or [16, 32])
        sizes = [(base, lat, 32) for base in ("sd15", "sdxl") for lat in latents]
        print(f"CPU run ({torch.get_num_threads()} threads): SMALL UNet widths (model_channels=32, not 320), "
              f"small latents {latents} (not 64/128), fp32, 'small' adapters, tiny CLIP vision. "
              "Not representative of GPU figures; use --device cuda for those.")
    largest = {base: max(lat for b, lat, _ in sizes if b == base) for base in ADAPTERS}

    others = other_packs(comfy_path)
    print("other IP-Adapter packs: " + (", ".join(p.name for p in others) if others
                                        else "no other IP-Adapter pack installed"))
    clip_cache: dict = {}
    started = time.perf_counter()
    results = [bench_topology(base, lat, ch, args, folder, clip_cache) for base, lat, ch in sizes]
    other_results = []
    for pack in others:
        for base, lat, ch in sizes:
            if lat != largest[base]:
                continue
            try:
                other_results.append(bench_other_pack(pack, base, lat, ch, args, folder, clip_cache))
            except Exception as exc:  # noqa: BLE001  (a foreign pack's API may differ: report it, keep ours)
                other_results.append({"pack": pack.name, "base": base, "measured": False, "why": repr(exc)})
    print()
    print_table(results, args.device, largest)
    for o in other_results:
        if o.get("measured"):
            print(f"\n{o['pack']} ({o['base']}, latent {o['latent']}):")
            print_table([{**o, "pixels": o["latent"] * 8, "adapter_size": "", "encode_images_per_s":
                          {"base": float("nan"), "plus": float("nan")}, "encode_batch": 1, "clip_vision": "n/a"}],
                        args.device, largest)
        else:
            print(f"{o['pack']}: not measured ({o['why']})")
    print(f"total benchmark time {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({
            "machine": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "device": args.device,
            "comfy_args": args.comfy_arg, "attention_backend": backend, "quick": args.quick,
            "repeats": args.repeats, "warmup": args.warmup,
            "timed": "BaseModel.apply_model, cond+uncond batch 2, loaded ModelPatcher's transformer_options",
            "targets_overhead_pct": TARGET_OVERHEAD_PCT, "results": results,
            "other_packs": [p.name for p in others], "other_pack_results": other_results,
        }, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
