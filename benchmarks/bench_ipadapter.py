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
Variants are interleaved round by round (plain, base x1, ..., plus x3, then the same backwards);
figures are medians with the min-max spread, overhead = median(patched) / median(plain) - 1.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
# Test builders only; never the repo root (its nodes/ and utils/ would shadow ComfyUI's).
sys.path.insert(0, str(REPO / "tests"))

from bench_other_pack import find_other_packs, load_other_pack, other_pack_models
from bench_timing import interleaved, step_inputs, sync
from support import checkpoints, comfy_harness, unets
from support.comfy_clip import tiny_comfy_clip_vision

TARGET_OVERHEAD_PCT = {"cuda": 1.0, "cpu": 1.5}
ADAPTERS = {
    "sd15": {"base": "ip-adapter_sd15", "plus": "ip-adapter-plus_sd15"},
    "sdxl": {"base": "ip-adapter_sdxl_vit-h", "plus": "ip-adapter-plus_sdxl_vit-h"},
}
STACKS = (1, 3)
# (base, latent side, model_channels). CPU: the tiny widths show the fixed cost per patched
# layer (the UNet's own work is ~100x smaller than at real width, the per-call cost of the
# image attention is not). The 1.5% target is judged at the last size per model: SD1.5 at
# its real width (320) and 256 px, where the image branch's share of the arithmetic is the
# real model's; SDXL at half its real width (its 2.6B parameters in fp32 do not fit in 24 GB
# beside the rest) with its real 64-wide heads at 512 px, where that share is about twice
# the real one. Both are ~1e8 in `_work`, and a step takes 5-12 s on 2 cores.
CPU_SIZES = (("sd15", 16, 32), ("sdxl", 16, 64), ("sd15", 32, 320), ("sdxl", 64, 160))
CPU_QUICK_SIZES = (("sd15", 16, 32), ("sdxl", 16, 64))
#: SDXL's attention head width (heads = width / 64); SD1.5 has 8 heads at every width.
SDXL_HEAD_CHANNELS = 64
CUDA_SIZES = (("sd15", 64, 320), ("sdxl", 128, 320))


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


def _adapter_file(folder: Path, variant: str, channels: int) -> str:
    """fp16 .safetensors: the published image projection, K/V widths of this UNet (any pack can load it)."""
    name = f"bench_{variant}_ch{channels}.safetensors"
    if not (folder / name).exists():
        sd = checkpoints.state_dict_for_unet_width(variant, channels, dtype=torch.float16)
        checkpoints.save_safetensors(sd, folder / name)
    return name


def _encode_rate(adapter, clip_vision, count: int, device: str) -> tuple[object, float]:
    """(image prompt, images/s) of one EncodeImagePrompt call on `count` images, after a warm-up call."""
    images = torch.rand(count, 256, 256, 3, generator=torch.Generator().manual_seed(1))
    for _ in range(2):
        sync(device)
        start = time.perf_counter()
        (prompt,) = comfy_harness.run_node("EncodeImagePrompt", ip_adapter=adapter, clip_vision=clip_vision,
                                           image=images, fit="center crop")
        sync(device)
    return prompt, count / (time.perf_counter() - start)


def bench_topology(base: str, latent: int, channels: int, args, folder: Path, clip_cache: dict,
                   others: list[str]) -> dict:
    """Our variants (and those of the usable other packs) on one UNet, timed in the same rounds."""
    device = args.device
    dtype = torch.float16 if device == "cuda" else torch.float32
    mm = comfy_harness.booted().model_management
    if base == "sd15":
        model = unets.comfy_sd15_model(seed=0, model_channels=channels, dtype=dtype, device=device)
    else:
        model = unets.comfy_sdxl_model(seed=0, model_channels=channels, dtype=dtype, device=device,
                                       num_head_channels=SDXL_HEAD_CHANNELS)
    mm.load_models_gpu([model])

    files = {kind: _adapter_file(folder, variant, channels) for kind, variant in ADAPTERS[base].items()}
    loads, encodes, models = {}, {}, {"plain": model}
    for kind, name in files.items():
        comfy_harness.run_node("LoadIPAdapter", adapter_name=name)  # warm the file cache / imports
        start = time.perf_counter()
        (adapter,) = comfy_harness.run_node("LoadIPAdapter", adapter_name=name)
        loads[kind] = time.perf_counter() - start
        prompt, encodes[kind] = _encode_rate(adapter, _clip_vision(device, folder, base, kind, clip_cache),
                                             args.encode_images, device)
        current = model
        for count in range(1, max(STACKS) + 1):
            (current,) = comfy_harness.run_node("ApplyIPAdapter", model=current, ip_adapter=adapter,
                                                image_prompt=prompt, weight=0.8, start_percent=0.0, end_percent=1.0)
            if count in STACKS:
                models[f"{kind} x{count}"] = current
    other_facts = {}
    image = torch.rand(1, 256, 256, 3, generator=torch.Generator().manual_seed(1))
    for pack in others:
        patched, other_facts[pack] = other_pack_models(
            pack, model, base, files, image, lambda kind: _clip_vision(device, folder, base, kind, clip_cache), STACKS)
        models.update(patched)
    for m in models.values():
        mm.load_models_gpu([m])  # also loads the adapters (patch.models()) as sampling would

    timings = interleaved(models, step_inputs(model, base, latent, device, dtype), device, args.warmup, args.repeats)
    mm.unload_all_models()
    mm.soft_empty_cache()
    return {
        "base": base, "device": device, "dtype": str(dtype).replace("torch.", ""), "model_channels": channels,
        "latent": latent, "pixels": latent * 8, "batch": "cond+uncond (2)", "adapters": ADAPTERS[base],
        "adapter_files": "published image projection, K/V widths x channels/320, fp16",
        "adapter_load_s": loads, "encode_images_per_s": encodes, "encode_batch": args.encode_images,
        "clip_vision": "random ViT-H/14 (full size)" if device == "cuda" else "tiny random CLIP vision (2 layers)",
        "step": timings, "other_packs": other_facts,
    }


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------

def _cell(s: dict) -> str:
    return f"{s['median_ms']:8.2f} [{s['min_ms']:.1f}-{s['max_ms']:.1f}]"


def _work(size: tuple[str, int, int]) -> int:
    """Rough UNet cost of (base, latent, channels): tokens x width^2."""
    return size[1] ** 2 * size[2] ** 2


def print_table(results: list[dict], device: str, judged_sizes: set[tuple]) -> None:
    target = TARGET_OVERHEAD_PCT[device]
    header = (f"{'model':5} {'px':>5} {'ch':>4} {'variant':32} {'step ms median [min-max]':>26} {'overhead':>9} "
              f"{'paired':>7} {'layers':>7} {'target (layers)':>15} {'peak MB':>8}")
    print(header)
    print("-" * len(header))
    for r in results:
        judged = (r["base"], r["latent"], r["model_channels"]) in judged_sizes
        for name, s in r["step"].items():
            over = paired = layers = verdict = ""
            if name != "plain":
                over, paired = f"{s['overhead_pct']:+8.2f}%", f"{s['paired_overhead_pct']:+6.2f}%"
                layers = f"{s['attributed']['overhead_pct']:+6.2f}%" if s.get("attributed") else ""
                verdict = _verdict(name, s, target) if judged else "(n/a)"
            print(f"{r['base']:5} {r['pixels']:5} {r['model_channels']:4} {name:32} {_cell(s):>26} {over:>9} "
                  f"{paired:>7} {layers:>7} {verdict:>15} {s['peak_memory_mb']:8.1f}")
        print(f"{'':5} LoadIPAdapter: base {r['adapter_load_s']['base'] * 1e3:.1f} ms, "
              f"plus {r['adapter_load_s']['plus'] * 1e3:.1f} ms; "
              f"EncodeImagePrompt: base {r['encode_images_per_s']['base']:.1f} img/s, "
              f"plus {r['encode_images_per_s']['plus']:.1f} img/s (batch {r['encode_batch']}, {r['clip_vision']})")
        for pack, facts in r["other_packs"].items():
            for kind, f in facts.items():
                registered, hit = f["slots_registered_hit"]
                print(f"{'':5} {pack} {kind}: IPAdapterModelLoader {f['load_s'] * 1e3:.1f} ms, IPAdapterAdvanced "
                      f"(encode + build + patch) {f['apply_s'] * 1e3:.1f} ms; attn2 keys registered {registered}, "
                      f"called by ComfyUI {hit}")
            print_ratios(r, pack)
    print("overhead: median step / median plain - 1; paired: median of the per-round ratios; layers: the "
          "patched layers' own added time (each call replayed, fastest of 15 single calls, alternated with the "
          "text attention alone) / the plain step's best")
    where = "fp16 at real size" if device == "cuda" else "at the largest CPU size per model"
    print(f"target: overhead within {target}% on {device} {where}, for one adapter (x1), judged on 'layers' "
          "('paired' where there is no layer figure); x3 rows (three adapters' math), the other pack's rows and "
          "smaller sizes show (n/a)" + ("; --quick judges nothing (too few rounds, smallest sizes)"
                                        if not judged_sizes else ""))


def _verdict(name: str, step: dict, target: float) -> str:
    """ok / MISS for one adapter of ours; the steady per-layer figure when there is one."""
    if "[" in name or not name.endswith("x1"):
        return "(n/a)"
    figure = step["attributed"]["overhead_pct"] if step.get("attributed") else step["paired_overhead_pct"]
    return f"<={target}% {'ok' if figure <= target else 'MISS'}"


def print_ratios(result: dict, pack: str) -> None:
    """Ours over the other pack's, same UNet, same rounds (< 1: we are faster).

    Median step over median step; the median of the per-round ratios (steadier: both are
    timed in the same round); and the time the patched layers add.
    """
    steps = result["step"]
    cells, added = [], []
    for name in steps:
        theirs = steps.get(f"{name} [{pack}]")
        if name != "plain" and theirs is not None:
            paired = statistics.median(a / b for a, b in zip(steps[name]["times_ms"], theirs["times_ms"]))
            cells.append(f"{name} {steps[name]['median_ms'] / theirs['median_ms']:.3f} ({paired:.3f})")
            if steps[name].get("attributed") and theirs.get("attributed"):
                added.append(f"{name} {steps[name]['attributed']['added_ms']:.1f} vs "
                             f"{theirs['attributed']['added_ms']:.1f}")
    print(f"{'':5} ratio ours/{pack}, median step (paired per round): " + ", ".join(cells))
    if added:
        print(f"{'':5} ms added per step by the patched layers, ours vs {pack}: " + ", ".join(added))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="smallest sizes, few rounds: checks that it runs")
    parser.add_argument("--repeats", type=int, help="timed rounds per size (default 15, quick 5)")
    parser.add_argument("--warmup", type=int, help="untimed rounds per size (default 2, quick 1)")
    parser.add_argument("--cpu-sizes", nargs="+", metavar="BASE:LATENT:CHANNELS",
                        help="CPU sizes, e.g. sd15:32:160 (default: " + " ".join(
                            f"{b}:{lat}:{ch}" for b, lat, ch in CPU_SIZES) + "); the target is judged at the "
                        "size with the most work per model")
    parser.add_argument("--encode-images", type=int, help="images per EncodeImagePrompt call (default 8, quick 2)")
    parser.add_argument("--comfy-arg", action="append", default=[], metavar="FLAG",
                        help="extra ComfyUI command-line flag, e.g. --comfy-arg=--use-pytorch-cross-attention "
                             "(repeatable; changes ComfyUI's attention backend)")
    parser.add_argument("--no-other-packs", action="store_true", help="do not measure other IP-Adapter packs")
    parser.add_argument("--json", type=Path, help="write all results here")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA device")
    args.repeats = args.repeats or (5 if args.quick else 15)
    args.warmup = args.warmup or (1 if args.quick else 2)
    args.encode_images = args.encode_images or (2 if args.quick else 8)

    comfy_path = comfy_harness.find_comfyui()
    if comfy_path is None:
        print(comfy_harness.COMFYUI_NOT_FOUND, file=sys.stderr)
        return 2
    comfy = comfy_harness.boot_comfyui(
        comfy_path, (("--cpu",) if args.device == "cpu" else ()) + tuple(args.comfy_arg))
    import comfy.ldm.modules.attention as comfy_attention

    pack = comfy_harness.load_pack(REPO, comfy)
    image_backend = sys.modules[f"{pack.module.__name__}.nodes.comfy_bridge"].image_attention_backend()
    backend = {"text": comfy_attention.optimized_attention.__name__, "image term": image_backend.__name__}
    print(f"ComfyUI {comfy_path} booted with {['--cpu'] if args.device == 'cpu' else []}{args.comfy_arg}; "
          f"attention: text branch {backend['text']}, our image term {backend['image term']}")
    folder = Path(comfy.folder_paths.get_temp_directory()) / "ip_adapter_bench"
    folder.mkdir(parents=True, exist_ok=True)
    comfy.folder_paths.add_model_folder_path("ipadapter", str(folder), is_default=True)

    if args.device == "cuda":
        sizes = list(CUDA_SIZES)
        print(f"CUDA run on {torch.cuda.get_device_name()}: real widths (model_channels=320), fp16, "
              "512 px SD1.5 / 1024 px SDXL, full-size adapters, full-size random ViT-H.")
    else:
        sizes = ([(b, int(lat), int(ch)) for b, lat, ch in (s.split(":") for s in args.cpu_sizes)]
                 if args.cpu_sizes else list(CPU_QUICK_SIZES if args.quick else CPU_SIZES))
        print(f"CPU run ({torch.get_num_threads()} threads), fp32, sizes (model, latent, model_channels) {sizes}: "
              "smaller latents than the real 512/1024 px, tiny widths for per-call costs, the last size per "
              "model judged; adapters with the published image projection and K/V widths matching the "
              "UNet, tiny CLIP vision. Not a prediction of GPU figures.")
    judged = set() if args.quick else {max((s for s in sizes if s[0] == base), key=_work)
                                       for base in {s[0] for s in sizes}}

    others = [] if args.no_other_packs else find_other_packs(comfy_path)
    usable = []
    for pack in others:
        why = load_other_pack(pack)
        print(f"other IP-Adapter pack {pack.name}: " + (f"not measured ({why})" if why else "measured in the same rounds"))
        if why is None:
            usable.append(pack.name)
    if not others:
        print("other IP-Adapter packs: " + ("not measured (--no-other-packs)" if args.no_other_packs
                                            else "no other IP-Adapter pack installed"))
    clip_cache: dict = {}
    started = time.perf_counter()
    results = []
    for base, lat, ch in sizes:
        results.append(bench_topology(base, lat, ch, args, folder, clip_cache, usable))
        if len(sizes) > 1:  # each size as soon as it is done: a long run that dies later keeps these
            print()
            print_table(results[-1:], args.device, judged)
    print()
    print_table(results, args.device, judged)
    print(f"total benchmark time {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({
            "machine": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "device": args.device,
            "comfy_args": args.comfy_arg, "attention_backend": backend, "quick": args.quick,
            "repeats": args.repeats, "warmup": args.warmup, "judged_sizes": sorted(judged),
            "timed": "BaseModel.apply_model, cond+uncond batch 2, loaded ModelPatcher's transformer_options",
            "targets_overhead_pct": TARGET_OVERHEAD_PCT, "results": results,
            "other_packs": [p.name for p in others], "other_packs_measured": usable,
        }, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
