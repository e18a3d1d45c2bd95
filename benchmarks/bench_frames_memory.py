"""Peak memory of encoding and applying one reference per latent, 16 vs 400 references (CPU, tiny encoder).

    python benchmarks/bench_frames_memory.py [--counts 16 400] [--variants plus base]

Each measurement runs in a fresh process (peak RSS is a per-process high-water mark):
ComfyUI boots on the CPU, a tiny CLIP vision tower (2 layers, real 1280/1024 widths,
257 tokens) and a tiny SD1.5 UNet are built, then a warm-up encodes and applies 16
references to 16 latents. The baseline is the peak after that warm-up; the figure is
how far the peak rises while the measured run encodes N references (Encode Image
Prompt, 'one per latent', encode_chunk as given), applies them (Apply IP-Adapter)
and runs one CFG model call over N latents in context windows of 16 frames
(ContextWindowsManual). 'Flat in the count apart from the tokens' means the rise at
400 is about the projected tokens (printed beside it), not the CLIP features; the
unchunked run (encode_chunk = N) shows what chunking saves.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WINDOW = 16
VARIANTS = {"base": "ip-adapter_sd15", "plus": "ip-adapter-plus_sd15"}


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def child(count: int, chunk: int, variant: str) -> dict:
    """One measurement in this process; returns the figures as a dict."""
    sys.path.insert(0, str(REPO / "tests"))
    import torch
    from support import checkpoints, comfy_harness, unets
    from support.comfy_clip import tiny_comfy_clip_vision

    comfy = comfy_harness.boot_comfyui(comfy_harness.find_comfyui(), ("--cpu",))
    comfy_harness.load_pack(REPO, comfy)
    comfy.load_builtin_extras(["nodes_context_windows.py"])
    folder = Path(comfy.folder_paths.get_temp_directory()) / "ip_adapter_frames_bench"
    folder.mkdir(parents=True, exist_ok=True)
    comfy.folder_paths.add_model_folder_path("ipadapter", str(folder), is_default=True)
    name = VARIANTS[variant]
    checkpoints.save_safetensors(checkpoints.ip_adapter_state_dict(name, "small", seed=7),
                                 folder / f"{name}.safetensors")
    run = comfy_harness.run_node
    (adapter,) = run("LoadIPAdapter", adapter_name=f"{name}.safetensors")
    clip_vision = tiny_comfy_clip_vision(folder, hidden=1280, projection_dim=1024, seed=3)
    model = unets.comfy_sd15_model(seed=5)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(count, 64, 64, 3, generator=g)
    latents = torch.randn(count, 4, 8, 8, generator=g)
    text, negative = torch.randn(2, 1, 77, 768, generator=g)

    def encode_apply_call(refs: torch.Tensor, x: torch.Tensor, encode_chunk: int) -> object:
        (prompt,) = run("EncodeImagePrompt", ip_adapter=adapter, clip_vision=clip_vision, image=refs,
                        fit="center crop", combine_embeds="one per latent", encode_chunk=encode_chunk)
        (patched,) = run("ApplyIPAdapter", model=model, ip_adapter=adapter, image_prompt=prompt, weight=1.0,
                         start_percent=0.0, end_percent=1.0)
        (windowed,) = run("ContextWindowsManual", model=patched, context_length=WINDOW, context_overlap=0,
                          context_schedule="standard_static", context_stride=1, closed_loop=False,
                          fuse_method="flat", dim=0, freenoise=False)
        unets.comfy_eps(windowed, x, 2.0, text, negative=negative, cfg=4.0)
        return prompt

    encode_apply_call(images[:WINDOW], latents[:WINDOW], WINDOW)  # warm-up: one window's worth
    baseline = peak_mb()
    prompt = encode_apply_call(images, latents, chunk)
    tokens_mb = (prompt.cond.numel() + prompt.uncond.numel()) * 4 / 2**20
    return {"count": count, "chunk": chunk, "variant": variant, "baseline_mb": round(baseline, 1),
            "rise_mb": round(peak_mb() - baseline, 1), "tokens_mb": round(tokens_mb, 1),
            "features_mb_if_held": round(count * (257 * 1280 if variant == "plus" else 1024) * 4 / 2**20, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[16, 400])
    parser.add_argument("--variants", nargs="+", default=["plus", "base"], choices=sorted(VARIANTS))
    parser.add_argument("--no-unchunked", action="store_true", help="skip the encode_chunk = N comparison runs")
    parser.add_argument("--child", nargs=3, metavar=("COUNT", "CHUNK", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(int(args.child[0]), int(args.child[1]), args.child[2])))
        return 0
    print("Peak memory rise over a 16-reference warm-up (CPU, tiny CLIP vision, tiny SD1.5 UNet, context windows "
          f"of {WINDOW}); tokens = the projected image prompt kept; features = what holding all CLIP features "
          "would cost.")
    print(f"{'variant':8} {'refs':>5} {'chunk':>6} {'baseline MB':>12} {'rise MB':>8} {'tokens MB':>10} "
          f"{'features MB':>12}")
    for variant in args.variants:
        for count in args.counts:
            chunks = [16] if args.no_unchunked or count <= 16 else [16, count]
            for chunk in chunks:
                out = subprocess.run([sys.executable, __file__, "--child", str(count), str(chunk), variant],
                                     capture_output=True, text=True, check=False)
                lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
                if out.returncode or not lines:
                    print(f"{variant} {count} {chunk}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                    return 1
                r = json.loads(lines[-1][len("RESULT "):])
                print(f"{variant:8} {count:5d} {chunk:6d} {r['baseline_mb']:12.1f} {r['rise_mb']:8.1f} "
                      f"{r['tokens_mb']:10.1f} {r['features_mb_if_held']:12.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
