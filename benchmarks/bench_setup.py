"""Setup cost inside a real ComfyUI: adapter load, encode, apply, queue-to-first-step; ours beside the incumbent.

Run from the repository root:

    python benchmarks/bench_setup.py                                   # CPU, our pack only
    COMFYUI_PATH=~/comfy/scratch/ComfyUI python benchmarks/bench_setup.py --json setup.json
    python benchmarks/bench_setup.py --device cuda                     # GPU: fp16 UNet, full ViT-H tower

Every figure is the median over `--rounds` interleaved rounds (ours first in even rounds,
the other pack first in odd ones), on fp16 `.safetensors` files with the published shapes
(SD1.5 base/plus, SDXL base/plus vit-h), random weights. What is timed, per file:

- load: `LoadIPAdapter` vs `IPAdapterModelLoader`, each on the file just loaded by the other
  (page cache warm for both).
- encode 1 (first after the load, so first-use work such as our finiteness check counts), and
  encode 8 after it: `EncodeImagePrompt` (CLIP tower + projection) vs `IPAdapterEncoder` (CLIP
  tower only: that pack projects in its apply node).
- apply: `ApplyIPAdapter` vs `IPAdapterEmbeds` (builds its modules and projects here).
- load+encode+apply, 1 image: ours as three nodes vs `IPAdapterModelLoader` + `IPAdapterAdvanced`.
- queue to first step: a whole graph (value nodes for UNet, CLIP vision, image, conditioning;
  the pack's nodes; KSampler, 1 step) through the real `PromptExecutor`, fresh caches, from
  `execute` to the first UNet call; then a re-queue with only the weight changed. The UNet
  has the real width but uninitialised weights and is never run: a forward pre-hook stops the
  prompt at the first call, after doing for our patches the one thing our first step adds
  (the K/V projection of the image tokens, `ImageBranch.kv`).
- peak RSS of a load: the process RSS high-water mark (reset through /proc/self/clear_refs)
  minus the RSS before the load, beside the file size and the module's size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from bench_other_pack import find_other_packs, load_other_pack
from bench_setup_graph import first_step_times, real_width_unet
from bench_timing import peak_mb, reset_peak, sync
from support import checkpoints, comfy_harness
from support.comfy_clip import tiny_comfy_clip_vision

FILES = {  # (name, base, variant in tests/support/checkpoints)
    "SD1.5 base": ("sd15", "ip-adapter_sd15"),
    "SD1.5 plus": ("sd15", "ip-adapter-plus_sd15"),
    "SDXL base vit-h": ("sdxl", "ip-adapter_sdxl_vit-h"),
    "SDXL plus vit-h": ("sdxl", "ip-adapter-plus_sdxl_vit-h"),
}
OTHER_LOADER, OTHER_ENCODER, OTHER_EMBEDS, OTHER_APPLY = (
    "IPAdapterModelLoader", "IPAdapterEncoder", "IPAdapterEmbeds", "IPAdapterAdvanced")


def _file(folder: Path, variant: str) -> Path:
    path = folder / f"setup_{variant}.safetensors"
    if not path.exists():
        checkpoints.save_safetensors(checkpoints.state_dict_for_unet_width(variant, 320, dtype=torch.float16), path)
    return path


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _timed(device: str, fn):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def _ours(name: str, ctx: dict) -> dict:
    """One round of our nodes on one file: load, encode 1 (first), apply, encode 8; load's peak RSS."""
    run, dev = comfy_harness.run_node, ctx["device"]
    before = _rss_mb()
    reset_peak("cpu")
    load, (adapter,) = _timed(dev, lambda: run("LoadIPAdapter", adapter_name=name))
    load_peak = peak_mb("cpu") - before
    enc1, (prompt,) = _timed(dev, lambda: run("EncodeImagePrompt", ip_adapter=adapter, clip_vision=ctx["clip"],
                                              image=ctx["images"][:1], fit="center crop"))
    first_use_peak = peak_mb("cpu") - before
    apply, _ = _timed(dev, lambda: run("ApplyIPAdapter", model=ctx["unet"], ip_adapter=adapter, image_prompt=prompt,
                                       weight=0.8, start_percent=0.0, end_percent=1.0))
    enc8, _ = _timed(dev, lambda: run("EncodeImagePrompt", ip_adapter=adapter, clip_vision=ctx["clip"],
                                      image=ctx["images"], fit="center crop"))
    module_mb = sum(t.numel() * t.element_size() for t in adapter.model.state_dict().values()) / 2**20
    return {"load": load, "encode 1 (first)": enc1, "encode 8": enc8, "apply": apply,
            "load+encode+apply": load + enc1 + apply, "load peak RSS MB": load_peak,
            "load+encode peak RSS MB": first_use_peak, "module MB": module_mb}


def _theirs(name: str, ctx: dict) -> dict:
    """The same steps with the other pack's nodes, plus its loader + IPAdapterAdvanced chain."""
    run, dev = comfy_harness.run_node, ctx["device"]
    before = _rss_mb()
    reset_peak("cpu")
    load, (ipadapter,) = _timed(dev, lambda: run(OTHER_LOADER, ipadapter_file=name))
    load_peak = peak_mb("cpu") - before
    enc1, (pos, neg) = _timed(dev, lambda: run(OTHER_ENCODER, ipadapter=ipadapter, image=ctx["images"][:1],
                                               weight=1.0, clip_vision=ctx["clip"]))
    apply, _ = _timed(dev, lambda: run(OTHER_EMBEDS, model=ctx["unet"], ipadapter=ipadapter, pos_embed=pos,
                                       neg_embed=neg, weight=0.8, weight_type="linear", start_at=0.0, end_at=1.0,
                                       embeds_scaling="V only"))
    enc8, _ = _timed(dev, lambda: run(OTHER_ENCODER, ipadapter=ipadapter, image=ctx["images"], weight=1.0,
                                      clip_vision=ctx["clip"]))
    load2, (ipadapter,) = _timed(dev, lambda: run(OTHER_LOADER, ipadapter_file=name))
    advanced, _ = _timed(dev, lambda: run(OTHER_APPLY, model=ctx["unet"], ipadapter=ipadapter, image=ctx["images"][:1],
                                          weight=0.8, weight_type="linear", combine_embeds="concat", start_at=0.0,
                                          end_at=1.0, embeds_scaling="V only", clip_vision=ctx["clip"]))
    return {"load": load, "encode 1 (first)": enc1, "encode 8": enc8, "apply": apply,
            "load+encode+apply": load2 + advanced, "load peak RSS MB": load_peak}


ROWS = ("load", "encode 1 (first)", "encode 8", "apply", "load+encode+apply", "queue to first step",
        "re-queue, weight changed")


def _median(rounds: list[dict]) -> dict:
    keys = [k for k, v in rounds[0].items() if isinstance(v, float)]
    return {k: statistics.median(r[k] for r in rounds) for k in keys} | {
        f"{k} spread": (min(r[k] for r in rounds), max(r[k] for r in rounds)) for k in keys}


def print_table(results: dict, other: str | None) -> None:
    theirs_name = other or "(other pack not installed)"
    print(f"\nsetup, median ms over interleaved rounds [min-max]; ours vs {theirs_name}")
    header = f"{'file':17} {'step':26} {'ours':>22} {'theirs':>22} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for file_name, r in results.items():
        ours, theirs = r["ours"], r.get("theirs")
        for row in ROWS:
            lo, hi = ours[f"{row} spread"]
            cell = f"{ours[row] * 1e3:8.1f} [{lo * 1e3:.0f}-{hi * 1e3:.0f}]"
            other_cell = ratio = ""
            if theirs and row in theirs:
                tlo, thi = theirs[f"{row} spread"]
                other_cell = f"{theirs[row] * 1e3:8.1f} [{tlo * 1e3:.0f}-{thi * 1e3:.0f}]"
                ratio = f"{ours[row] / theirs[row]:.2f}"
            print(f"{file_name:17} {row:26} {cell:>22} {other_cell:>22} {ratio:>6}")
        mem = (f"{'':17} file {r['file_mb']:.1f} MB, module {r['module_mb']:.1f} MB; peak RSS added by the load: "
               f"ours {ours['load peak RSS MB']:.1f} MB, by load + first encode {ours['load+encode peak RSS MB']:.1f} MB")
        if theirs:
            mem += f"; theirs (load) {theirs['load peak RSS MB']:.1f} MB"
        print(mem)
        if "plain" in r:
            requeued = [n for n in r["rounds_ours"][-1].get("re-queue executed", [])]
            print(f"{'':17} graph without an adapter: queue to first step {r['plain']['queue to first step'] * 1e3:.1f} "
                  f"ms, re-queue {r['plain']['re-queue, weight changed'] * 1e3:.1f} ms; our re-queue ran nodes "
                  f"{requeued} (6 = Apply, 10 = KSampler)")
    print("ratio: ours / theirs (below 1: ours is cheaper). Targets: load <= 2x theirs; load+encode+apply <= theirs "
          "(their loader + IPAdapterAdvanced); peak RSS of a load <= file + module.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--files", nargs="+", choices=list(FILES), default=list(FILES))
    parser.add_argument("--no-graph", action="store_true", help="skip queue-to-first-step (the real-executor graph)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's). On an oversubscribed "
                        "machine 1 is steadier: an OpenMP barrier waits for every thread to be scheduled")
    parser.add_argument("--no-other-packs", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    comfy_path = comfy_harness.find_comfyui()
    if comfy_path is None:
        print(comfy_harness.COMFYUI_NOT_FOUND, file=sys.stderr)
        return 2
    # fp32 CLIP vision on the CPU: ComfyUI's fp16 default there makes the tower (the same for both packs)
    # dominate every encode figure.
    comfy = comfy_harness.boot_comfyui(comfy_path, ("--cpu", "--fp32-text-enc") if args.device == "cpu" else ())
    comfy_harness.load_pack(REPO, comfy)
    folder = Path(comfy.folder_paths.get_temp_directory()) / "ip_adapter_bench"
    folder.mkdir(parents=True, exist_ok=True)
    comfy.folder_paths.add_model_folder_path("ipadapter", str(folder), is_default=True)
    other = None
    for pack in ([] if args.no_other_packs else find_other_packs(comfy_path)):
        why = load_other_pack(pack)
        print(f"other IP-Adapter pack {pack.name}: " + (f"not measured ({why})" if why else "measured"))
        other = other or (None if why else pack.name)
    dtype = torch.float16 if args.device == "cuda" else torch.float32
    if args.device == "cuda":
        import comfy.clip_vision
        from support.clip_vision_files import write_clip_vision_vit_h

        path = folder / "random_vit_h.safetensors"
        if not path.exists():
            write_clip_vision_vit_h(path)
        clip = comfy.clip_vision.load(str(path))
    else:
        clip = tiny_comfy_clip_vision(folder, hidden=1280, projection_dim=1024)
    images = torch.rand(8, 256, 256, 3, generator=torch.Generator().manual_seed(1))
    print(f"{args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads; CLIP vision: "
          + ("random full ViT-H/14" if args.device == "cuda" else "tiny random tower with ViT-H widths (2 layers)")
          + f"; UNets: real width, {str(dtype)[6:]}, uninitialised (never run)")
    unets: dict = {}
    results = {}
    for file_name in args.files:
        base, variant = FILES[file_name]
        path = _file(folder, variant)
        if base not in unets:
            unets.clear()
            unets[base] = real_width_unet(base, dtype, args.device)
        ctx = {"device": args.device, "clip": clip, "images": images, "unet": unets[base]}
        ours, theirs, plain = [], [], []
        for round_index in range(args.rounds + 1):  # round 0 warms imports and caches, not counted
            for side in (("ours", "theirs") if round_index % 2 == 0 else ("theirs", "ours")):
                if side == "theirs" and other is None:
                    continue
                row = _ours(path.name, ctx) if side == "ours" else _theirs(path.name, ctx)
                if not args.no_graph:
                    row.update(first_step_times(side, path.name, base, ctx))
                if round_index:
                    (ours if side == "ours" else theirs).append(row)
            if not args.no_graph and round_index:
                plain.append(first_step_times("plain", path.name, base, ctx))
        results[file_name] = {"file_mb": path.stat().st_size / 2**20, "module_mb": ours[0]["module MB"],
                              "ours": _median(ours), **({"theirs": _median(theirs)} if theirs else {}),
                              **({"plain": _median(plain)} if plain else {}),
                              "rounds_ours": ours, "rounds_theirs": theirs}
        print_table({file_name: results[file_name]}, other)
    print_table(results, other)
    if args.json:
        args.json.write_text(json.dumps({"machine": platform.platform(), "torch": torch.__version__,
                                         "threads": torch.get_num_threads(), "device": args.device,
                                         "load_average": os.getloadavg(),
                                         "other_pack": other, "rounds": args.rounds, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
