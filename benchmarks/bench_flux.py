"""Flux + XLabs IP-Adapter inside a real ComfyUI: step time patched vs unpatched, and the FLOP share.

Run from the repository root:

    python benchmarks/bench_flux.py --quick               # CPU, small width, checks that it runs
    python benchmarks/bench_flux.py --device cpu --json flux_cpu.json
    python benchmarks/bench_flux.py --device cuda --json flux_cuda.json   # real width 3072, bf16

What is timed ("step"): one call of ComfyUI's `BaseModel.apply_model` on a Flux dev built by
ComfyUI (all 19 double and, on CUDA, 38 single blocks; on the CPU 2 single blocks and a
smaller width) with the ModelPatcher's own `transformer_options`, cond and uncond batched
(`cond_or_uncond = [1, 0]`, as with cfg > 1). Variants: plain, XLabs v1 (4 tokens), v2 (16),
and v1 applied twice (stacked); timed alternately for `--repeats` rounds after a warm-up,
reversed every other round. Overhead = min(patched) / min(plain) - 1 (on a shared machine noise
only adds time, so the fastest call is the steadiest figure), medians beside it. `--threads`
sets torch's CPU threads (1 keeps a busy shared machine from oversubscribing).

Also printed: the arithmetic of the image term against the whole transformer at the real
width (3072, 24 heads, 19 + 38 blocks) for 1024 px (4096 image tokens, 512 text tokens).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from bench_timing import sync
from support import comfy_harness, flux_models

# (hidden, heads, single blocks, latent side): latent 64 = 512 px = 1024 image tokens.
CPU_SIZES = ((128, 2, 2, 32), (256, 4, 2, 64))
CPU_QUICK_SIZES = ((64, 2, 2, 16),)
CUDA_SIZES = ((3072, 24, 38, 128),)
TEXT_TOKENS = 512


def real_width_flops(image_tokens: int = 4096, text_tokens: int = TEXT_TOKENS, tokens: int = 4) -> dict:
    """FLOPs per forward (batch 1) of Flux dev's transformer blocks and of the XLabs image term."""
    hidden, heads, mlp = 3072, 24, 12288
    n = image_tokens + text_tokens
    head = hidden // heads
    double = 2 * n * hidden * (3 * hidden + hidden + 2 * mlp) + 4 * heads * n * n * head
    single = 2 * n * hidden * (3 * hidden + mlp) + 2 * n * (hidden + mlp) * hidden + 4 * heads * n * n * head
    model = 19 * double + 38 * single
    term = 19 * 4 * heads * image_tokens * tokens * head
    return {"transformer_flops": model, "image_term_flops": term, "share_pct": 100 * term / model}


class FluxStep:
    """One `apply_model` call with cond and uncond rows batched, as `calc_cond_batch` makes it."""

    def __init__(self, latent: int, device: str, dtype: torch.dtype) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(2, 16, latent, latent, generator=g).to(device, dtype)
        self.context = torch.randn(2, TEXT_TOKENS, flux_models.CONTEXT, generator=g).to(device, dtype)
        self.pooled = torch.randn(2, flux_models.VEC, generator=g).to(device, dtype)
        self.sigma = torch.full((2,), 0.7, device=device)
        self.guidance = torch.full((2,), 3.5, device=device)

    def __call__(self, model, device: str) -> float:
        options = dict(model.model_options.get("transformer_options", {}))
        options["cond_or_uncond"] = [1, 0]
        options["sigmas"] = self.sigma[:1]
        sync(device)
        start = time.perf_counter()
        with torch.inference_mode():
            model.model.apply_model(self.x, self.sigma, c_crossattn=self.context, transformer_options=options,
                                    y=self.pooled, guidance=self.guidance)
        sync(device)
        return time.perf_counter() - start


def bench_size(hidden: int, heads: int, single: int, latent: int, args, folder: Path) -> dict:
    device = args.device
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    mm = comfy_harness.booted().model_management
    model = flux_models.comfy_flux_model(seed=0, dtype=dtype, device=device, hidden=hidden, heads=heads,
                                         axes=flux_models.axes_for(hidden // heads), single=single)
    mm.load_models_gpu([model])
    models = {"plain": model}
    for tokens in (4, 16):
        name = f"bench_flux_v{1 if tokens == 4 else 2}_h{hidden}.safetensors"
        if not (folder / name).exists():
            sd = flux_models.xlabs_state_dict(tokens, seed=1, hidden=hidden)
            flux_models.save({k: v.to(torch.float16) for k, v in sd.items()}, folder / name)
        (adapter,) = comfy_harness.run_node("LoadIPAdapter", adapter_name=name)
        image_embeds = torch.randn(1, 768, generator=torch.Generator().manual_seed(2))
        prompt = _prompt(adapter, image_embeds)
        (patched,) = comfy_harness.run_node("ApplyIPAdapter", model=model, ip_adapter=adapter, image_prompt=prompt,
                                            weight=0.8, start_percent=0.0, end_percent=1.0)
        models[f"v{1 if tokens == 4 else 2}"] = patched
        if tokens == 4:
            (stacked,) = comfy_harness.run_node("ApplyIPAdapter", model=patched, ip_adapter=adapter,
                                                image_prompt=prompt, weight=0.5, start_percent=0.0, end_percent=1.0)
            models["v1 x2"] = stacked
    mm.load_models_gpu(list(models.values()))
    step = FluxStep(latent, device, dtype)
    for _ in range(args.warmup):
        for m in models.values():
            step(m, device)
    times: dict[str, list[float]] = {name: [] for name in models}
    order = list(models.items())
    for index in range(args.repeats):
        for name, m in (order if index % 2 == 0 else order[::-1]):
            times[name].append(step(m, device))
    plain, plain_median = min(times["plain"]), statistics.median(times["plain"])
    rows = {}
    for name, t in times.items():
        rows[name] = {"median_ms": statistics.median(t) * 1e3, "min_ms": min(t) * 1e3, "max_ms": max(t) * 1e3}
        if name != "plain":
            rows[name]["overhead_pct"] = (min(t) / plain - 1) * 100
            rows[name]["median_overhead_pct"] = (statistics.median(t) / plain_median - 1) * 100
    return {"hidden": hidden, "heads": heads, "single_blocks": single, "latent": latent,
            "image_tokens": (latent // 2) ** 2, "rows": rows}


def _prompt(adapter, image_embeds: torch.Tensor):
    """An image prompt from CLIP image_embeds through ImagePromptFromCLIPVision (no tower needed with a negative)."""

    class Output:  # what CLIPVisionEncode returns: attributes per feature
        def __init__(self, embeds: torch.Tensor) -> None:
            self.image_embeds = embeds

    (prompt,) = comfy_harness.run_node("ImagePromptFromCLIPVision", ip_adapter=adapter,
                                       clip_vision_output=Output(image_embeds), negative=Output(image_embeds * 0.5))
    return prompt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="smallest size, few rounds: checks that it runs")
    parser.add_argument("--repeats", type=int, help="timed rounds (default 9, quick 3)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.repeats = args.repeats or (3 if args.quick else 9)
    comfy_path = comfy_harness.find_comfyui()
    if comfy_path is None:
        print(comfy_harness.COMFYUI_NOT_FOUND, file=sys.stderr)
        return 2
    comfy = comfy_harness.boot_comfyui(comfy_path, ("--cpu",) if args.device == "cpu" else ())
    comfy_harness.load_pack(REPO, comfy)
    folder = Path(comfy.folder_paths.get_temp_directory()) / "ip_adapter_bench_flux"
    folder.mkdir(parents=True, exist_ok=True)
    comfy.folder_paths.add_model_folder_path("ipadapter", str(folder), is_default=True)
    sizes = CUDA_SIZES if args.device == "cuda" else (CPU_QUICK_SIZES if args.quick else CPU_SIZES)
    print(f"{args.device}: {torch.get_num_threads()} torch threads, sizes (hidden, heads, single blocks, latent) "
          f"{sizes}; random weights in the published layouts, adapter weights fp16 on disk.")
    arithmetic = {f"v{1 if t == 4 else 2}": real_width_flops(tokens=t) for t in (4, 16)}
    for name, row in arithmetic.items():
        print(f"real width, 1024 px, batch 1: image term {name} {row['image_term_flops'] / 1e9:.2f} GFLOP of "
              f"{row['transformer_flops'] / 1e12:.1f} TFLOP ({row['share_pct']:.3f} %)")
    results = []
    for hidden, heads, single, latent in sizes:
        result = bench_size(hidden, heads, single, latent, args, folder)
        results.append(result)
        print(f"\n{args.device}, hidden {hidden} ({heads} heads), 19 double + {single} single blocks, "
              f"{result['image_tokens']} image + {TEXT_TOKENS} text tokens, batch 2 (cond + uncond):")
        for name, row in result["rows"].items():
            extra = (f"  overhead {row['overhead_pct']:+.2f} % (medians {row['median_overhead_pct']:+.2f} %)"
                     if "overhead_pct" in row else "")
            print(f"  {name:6s} min {row['min_ms']:8.1f} ms  (median {row['median_ms']:.1f}, max {row['max_ms']:.1f})"
                  f"{extra}")
    if args.json:
        args.json.write_text(json.dumps({"device": args.device, "arithmetic": arithmetic, "sizes": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
