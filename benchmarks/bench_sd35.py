"""SD3.5 (InstantX IP-Adapter) cost inside a real ComfyUI: MMDiT step time patched vs unpatched, FLOP shares.

Run from the repository root:

    python benchmarks/bench_sd35.py                    # CPU, small width (4 joint blocks, 256 wide), 512 px
    python benchmarks/bench_sd35.py --depth 6 --latent 64 --repeats 9 --json sd35_cpu.json
    python benchmarks/bench_sd35.py --device cuda --depth 38 --dtype bf16   # SD3.5-Large's real width on a GPU

What is timed ("step"): one MMDiT forward through ComfyUI's `BaseModel.apply_model` with cond and
uncond batched (`cond_or_uncond = [1, 0]`, batch 2, as KSampler with cfg > 1) and the ModelPatcher's
`transformer_options`, so the joint-block patches run as in sampling, the resampler included (once
per step). The adapter keeps the release's resampler (1152 -> 1280 wide, 4 layers, 20 heads, 64
tokens); its K/V match the model width. Plain and patched alternate round by round; figures are
medians, overhead = median(patched) / median(plain) - 1, and the median of per-round ratios.

FLOP shares: counted by `torch.utils.flop_counter.FlopCounterMode` at the timed size, and computed
for SD3.5-Large at 1024 px (38 blocks of 2432, 4096 image + 333 text tokens) from the formula in
`large_flops`, which is checked against the counter at the timed size first.
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
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # test builders only, never the repo root

from support import comfy_harness, sd3_models  # noqa: E402

TEXT_TOKENS = 333  # 77 CLIP + 256 T5 tokens, as SD3.5's text encoders give
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def host_flops(blocks: int, hidden: int, image: int, text: int) -> int:
    """Matrix-product FLOPs of one MMDiT row's joint blocks (projections, MLPs, joint attention)."""
    per_block = 2 * image * hidden * (3 + 1 + 8) * hidden + 4 * (image + text) ** 2 * hidden
    context = 2 * text * hidden * 12 * hidden
    last_context = 2 * text * hidden * 3 * hidden  # the last block's context stream only projects qkv
    modulation = 2 * hidden * 12 * hidden
    return blocks * (per_block + modulation) + (blocks - 1) * context + last_context


def extra_flops(blocks: int, hidden: int, image: int, tokens: int, time_dim: int) -> int:
    """What the adapter adds per row and block: norm_ip Linear, K/V of its tokens, the image attention."""
    return blocks * (2 * time_dim * 2 * hidden + 4 * tokens * hidden * hidden + 4 * image * (image + tokens) * hidden)


def resampler_flops(shape) -> int:
    from ipadapter_pack.ip_adapter.sd3.resampler import TimeResampler

    with torch.device("meta"):
        resampler = TimeResampler(shape)
        features, t = torch.empty(1, 729, shape.clip_dim), torch.empty(1)
    with FlopCounterMode(display=False) as counter:
        resampler(features, t)
    return counter.get_total_flops()


def build(depth: int, latent: int, device: str, dtype: torch.dtype, pack_name: str):
    dm = sd3_models.diffusers_sd3(depth=depth, seed=1, pos_max=max(16, latent // 2))
    model = sd3_models.comfy_sd3_model(dm)
    sd = sd3_models.sd35_adapter_state_dict(depth, 64 * depth, seed=3)  # release resampler, model-width K/V
    model_module = sys.modules[f"{pack_name}.ip_adapter.sd3.model"]
    adapter = model_module.SD3Adapter.from_state_dict(sd).to(device=device, dtype=dtype)
    return model, adapter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--depth", type=int, default=4, help="joint blocks; width = 64 x depth (38: SD3.5-Large)")
    parser.add_argument("--latent", type=int, default=64, help="latent side (64 = 512 px)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json")
    args = parser.parse_args()
    dtype = DTYPES[args.dtype]
    comfy = comfy_harness.boot_comfyui(comfy_harness.find_comfyui(), ("--cpu",) if args.device == "cpu" else ())
    pack = comfy_harness.load_pack(comfy_harness.REPO_ROOT, comfy)
    import comfy.model_management as mm

    name = pack.module.__name__
    bridge = sys.modules[f"{name}.nodes.sd3_bridge"]
    comfy_bridge = sys.modules[f"{name}.nodes.comfy_bridge"]
    patch_module = sys.modules[f"{name}.ip_adapter.sd3.patch"]
    prompt_module = sys.modules[f"{name}.ip_adapter.sd3.prompt"]
    sys.modules.setdefault("ipadapter_pack", pack.module)

    model, adapter = build(args.depth, args.latent, args.device, dtype, name)
    shape = adapter.shape
    g = torch.Generator().manual_seed(0)
    features = torch.randn(1, 729, shape.clip_dim, generator=g)
    prompt = prompt_module.SD3ImagePrompt(cond=features, uncond=torch.zeros_like(features), shape=shape)
    ratios, normed = bridge.block_ratios(bridge.check_model_fits(model, shape, "bench", "bench"), adapter, "bench")
    branch = patch_module.SD3Branch(adapter=adapter, prompt=prompt, weight=0.5, ratios=ratios, host_normed=normed)
    patched = comfy_bridge.patched_clone(model, branch)
    mm.load_models_gpu([model, patched])

    x = torch.randn(2, 16, args.latent, args.latent, generator=g).to(args.device, dtype)
    context = torch.randn(2, TEXT_TOKENS, sd3_models.TEXT_DIM, generator=g).to(args.device, dtype)
    pooled = torch.randn(2, sd3_models.POOLED_DIM, generator=g).to(args.device, dtype)
    sigma = torch.full((2,), 0.6, device=args.device)

    def step(m) -> float:
        options = {**m.model_options.get("transformer_options", {}), "cond_or_uncond": [1, 0], "sigmas": sigma[:1]}
        if args.device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            m.model.apply_model(x, sigma, c_crossattn=context, y=pooled, transformer_options=options)
        if args.device != "cpu":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for m in (model, patched, model, patched):
        step(m)
    times: dict[str, list[float]] = {"plain": [], "patched": []}
    for r in range(args.repeats):
        order = (("plain", model), ("patched", patched)) if r % 2 == 0 else (("patched", patched), ("plain", model))
        for key, m in order:
            times[key].append(step(m))
    rows, steps = features.expand(2, -1, -1).to(args.device), torch.full((2,), 600.0, device=args.device)
    resampler_times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        adapter.tokens(rows, steps)
        if args.device != "cpu":
            torch.cuda.synchronize()
        resampler_times.append(time.perf_counter() - start)
    counts = {}
    for key, m in (("plain", model), ("patched", patched)):
        with FlopCounterMode(display=False) as counter:
            step(m)
        counts[key] = counter.get_total_flops()

    image = (args.latent // 2) ** 2
    hidden, resampler = shape.hidden_size, resampler_flops(shape)
    counted_extra = counts["patched"] - counts["plain"]
    formula_extra = 2 * (extra_flops(shape.blocks, hidden, image, shape.tokens, shape.resampler_dim) + resampler)
    large = {"host": host_flops(38, 2432, 4096, TEXT_TOKENS), "extra": extra_flops(38, 2432, 4096, 64, 1280),
             "resampler": resampler}
    large["image_attention"] = 38 * 4 * 4096 * (4096 + 64) * 2432
    plain_ms, patched_ms = statistics.median(times["plain"]) * 1e3, statistics.median(times["patched"]) * 1e3
    paired = statistics.median(p / q for p, q in zip(times["patched"], times["plain"])) - 1.0
    report = {
        "device": args.device, "dtype": args.dtype, "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(), "blocks": shape.blocks, "width": hidden,
        "latent": args.latent, "image_tokens": image, "text_tokens": TEXT_TOKENS, "batch": 2,
        "plain_ms": plain_ms, "patched_ms": patched_ms, "overhead_pct": (patched_ms / plain_ms - 1) * 100,
        "paired_overhead_pct": paired * 100, "added_ms_per_step": patched_ms - plain_ms,
        "resampler_ms_per_step": statistics.median(resampler_times) * 1e3,
        "flops": counts, "extra_flop_share_pct": counted_extra / counts["plain"] * 100,
        "extra_matches_formula": counted_extra == formula_extra,
        "large_1024px": {**large, "extra_share_pct": (large["extra"] + large["resampler"]) / large["host"] * 100,
                         "image_attention_share_pct": large["image_attention"] / large["host"] * 100},
    }
    print(f"SD3.5 step, {args.device} {args.dtype}, {shape.blocks} blocks x {hidden}, {image} image + "
          f"{TEXT_TOKENS} text tokens, batch 2: plain {plain_ms:.1f} ms, patched {patched_ms:.1f} ms, "
          f"overhead {report['overhead_pct']:.1f} % (paired {report['paired_overhead_pct']:.1f} %); of the "
          f"{report['added_ms_per_step']:.0f} ms added, the resampler (once per step, 2 rows) "
          f"{report['resampler_ms_per_step']:.0f} ms")
    print(f"  FLOPs at this size: host {counts['plain']:.3e}, adapter +{report['extra_flop_share_pct']:.1f} % "
          f"(formula {'matches' if report['extra_matches_formula'] else 'DIFFERS'})")
    print(f"  SD3.5-Large 1024 px (formula): adapter +{report['large_1024px']['extra_share_pct']:.1f} % of the "
          f"blocks' FLOPs, of which the image attention {report['large_1024px']['image_attention_share_pct']:.1f} %")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
