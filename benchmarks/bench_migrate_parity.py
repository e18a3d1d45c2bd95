"""Same look after `python -m ip_adapter.migrate`: the incumbent's graph and the converted graph, sampled.

Needs a ComfyUI whose `custom_nodes/` holds ComfyUI_IPAdapter_plus (the pack this one replaces):

    COMFYUI_PATH=~/comfy/scratch/ComfyUI python benchmarks/bench_migrate_parity.py

Skips with a message when the incumbent is not installed there (CI never runs it). Both packs
are loaded into one ComfyUI the way it loads custom nodes; one random-weight SD1.5 checkpoint
(the real topology at width 320, `tests/support/sd15_checkpoint`), IP-Adapter files in the
published layouts (base and plus, K/V trimmed to that width) and a small CLIP vision tower
(ViT-H widths, 2 layers) are written to a temporary folder. For each option an API graph
with the incumbent's `IPAdapterModelLoader` + `IPAdapterAdvanced` is converted with
`ip_adapter.migrate.convert` and both graphs are sampled (KSampler, fixed seed, cfg 5,
3 steps, 64 px) through ComfyUI's own executor. Figures:

* rel: max |latent(converted) - latent(incumbent)| / max |latent(incumbent) - latent(no adapter)|;
* rel, middle off: the same with the middle-block attn2 patch removed from the converted model
  (a benchmark-only node): the incumbent registers its middle patch under ("middle", 1),
  which ComfyUI never calls, so this isolates our deliberate difference;
* for the plus adapter also with a black negative image (the incumbent's unconditional tokens).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from bench_other_pack import find_other_packs, load_other_pack
from support import checkpoints, clip_vision_files, comfy_harness, sd15_checkpoint
from support.comfy_prompts import PromptRunner
from support.comfy_server import TEST_NODES_DIR

SIZE, STEPS, CFG, SEED = 64, 3, 5.0, 7
TARGET = 1e-4
CLIP_NAME = "tiny_vit_h.safetensors"
ADAPTERS = {"base": "ip-adapter_sd15.safetensors", "plus": "ip-adapter-plus_sd15.safetensors"}
ADVANCED = dict(weight=0.8, weight_type="linear", combine_embeds="concat", start_at=0.0, end_at=1.0,
                embeds_scaling="V only")
#: option -> (adapter, IPAdapterAdvanced widget changes, extra inputs)
OPTIONS: dict[str, tuple[str, dict, dict]] = {
    "linear": ("base", {}, {}),
    "style transfer (weight type)": ("base", {"weight_type": "style transfer"}, {}),
    "average of 2 images (combine)": ("base", {"combine_embeds": "average"}, {"image": ["batch", 0]}),
    "K+V (embeds scaling)": ("base", {"embeds_scaling": "K+V", "weight": 1.3}, {}),
    "attn_mask (left half)": ("base", {}, {"attn_mask": ["mask", 1]}),
    "start 0.3 / end 0.7 (window)": ("base", {"start_at": 0.3, "end_at": 0.7}, {}),
    "start 0 / end 0.5 (window)": ("base", {"start_at": 0.0, "end_at": 0.5}, {}),
    "negative image": ("base", {}, {"image_negative": ["ref_b", 0]}),
    "plus, linear": ("plus", {}, {}),
}


class DropMiddleAttn2:
    """Benchmark only: a clone of MODEL without the middle block's attn2 replace patches."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "run"
    CATEGORY = "benchmark"

    def run(self, model):
        clone = model.clone()
        attn2 = clone.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
        for key in [k for k in attn2 if k[0] == "middle"]:
            del attn2[key]
        return (clone,)


def write_models(root: Path) -> None:
    folders = {name: root / name for name in ("checkpoints", "ipadapter", "clip_vision")}
    for path in folders.values():
        path.mkdir(parents=True, exist_ok=True)
    sd15_checkpoint.write_sd15_checkpoint(folders["checkpoints"] / "tiny_sd15.safetensors", seed=1)
    for name in ADAPTERS.values():
        sd = checkpoints.ip_adapter_state_dict(name.removesuffix(".safetensors"), size="full", seed=2)
        for key, value in sd.items():  # the tiny UNet is 320 wide at every level
            if key.startswith("ip_adapter."):
                sd[key] = value[: sd15_checkpoint.UNET_WIDTH].clone()
        checkpoints.save_safetensors(sd, folders["ipadapter"] / name)
    config = clip_vision_files.tiny_clip_vision_config(hidden=1280, projection_dim=1024)
    clip_vision_files.save_clip_vision_config(config, (folders["clip_vision"] / CLIP_NAME).with_suffix(".json"))
    clip_vision_files.write_clip_vision(folders["clip_vision"] / CLIP_NAME, config, seed=3, dtype=torch.float32)


def write_inputs(folder: Path) -> None:
    rng = np.random.default_rng(11)
    for name in ("ref_a.png", "ref_b.png"):
        Image.fromarray(rng.integers(0, 256, (96, 80, 3), dtype=np.uint8)).save(folder / name)
    rgba = np.concatenate([np.zeros((SIZE, SIZE, 3), np.uint8), np.full((SIZE, SIZE, 1), 255, np.uint8)], axis=2)
    rgba[:, : SIZE // 2, 3] = 0  # LoadImage's MASK is 1 - alpha: 1 on the left half
    Image.fromarray(rgba, "RGBA").save(folder / "mask.png")


def incumbent_graph(adapter: str, changes: dict, extra: dict, with_adapter: bool = True) -> dict:
    graph = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo", "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["ckpt", 1]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "ref_a": {"class_type": "LoadImage", "inputs": {"image": "ref_a.png"}},
        "ref_b": {"class_type": "LoadImage", "inputs": {"image": "ref_b.png"}},
        "batch": {"class_type": "ImageBatch", "inputs": {"image1": ["ref_a", 0], "image2": ["ref_b", 0]}},
        "mask": {"class_type": "LoadImage", "inputs": {"image": "mask.png"}},
        "sampler": {"class_type": "KSampler", "inputs": {
            "seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0]}},
    }
    if with_adapter:
        graph["loader"] = {"class_type": "IPAdapterModelLoader", "inputs": {"ipadapter_file": ADAPTERS[adapter]}}
        graph["clip_vision"] = {"class_type": "TinyCLIPVisionLoader", "inputs": {"clip_name": CLIP_NAME}}
        graph["apply"] = {"class_type": "IPAdapterAdvanced", "inputs": {
            **ADVANCED, **changes, "model": ["ckpt", 0], "ipadapter": ["loader", 0], "image": ["ref_a", 0],
            "clip_vision": ["clip_vision", 0], **extra}}
        graph["sampler"]["inputs"]["model"] = ["apply", 0]
    # ComfyUI wants numeric-looking ids only for the UI; API ids are any strings. Keep them numeric anyway.
    ids = {name: str(i) for i, name in enumerate(graph, start=1)}

    def relink(value):
        return [ids[value[0]], value[1]] if isinstance(value, list) and len(value) == 2 and value[0] in ids else value

    return {ids[name]: {"class_type": n["class_type"], "inputs": {k: relink(v) for k, v in n["inputs"].items()}}
            for name, n in graph.items()}


def sampled(runner: PromptRunner, graph: dict) -> torch.Tensor:
    (sampler,) = [k for k, n in graph.items() if n["class_type"] == "KSampler"]
    result = runner.run(graph, targets=[sampler])
    return result.outputs[sampler][0][0]["samples"].float().clone()


def variant(converted: dict, drop_middle: bool, black_negative: bool) -> dict:
    graph = json.loads(json.dumps(converted))
    applies = [k for k, n in graph.items() if n["class_type"] == "ApplyIPAdapter"]
    if drop_middle:
        for key in applies:
            graph[f"{key}_nomid"] = {"class_type": "DropMiddleAttn2", "inputs": {"model": [key, 0]}}
            for node in graph.values():
                if node["inputs"].get("model") == [key, 0] and node["class_type"] != "DropMiddleAttn2":
                    node["inputs"]["model"] = [f"{key}_nomid", 0]
    if black_negative:
        graph["black"] = {"class_type": "EmptyImage", "inputs": {"width": 224, "height": 224, "batch_size": 1,
                                                                 "color": 0}}
        for node in graph.values():
            if node["class_type"] == "EncodeImagePrompt":
                node["inputs"]["negative_image"] = ["black", 0]
    return graph


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--only", nargs="*", help="run only the options whose name starts with one of these")
    args = parser.parse_args()
    comfy_path = comfy_harness.find_comfyui()
    if comfy_path is None:
        print("SKIP: no ComfyUI found (set COMFYUI_PATH to a ComfyUI with ComfyUI_IPAdapter_plus in custom_nodes)")
        return 0
    others = [p for p in find_other_packs(comfy_path) if "plus" in p.name.lower()]
    if not others:
        print(f"SKIP: ComfyUI_IPAdapter_plus is not installed in {comfy_path / 'custom_nodes'}; nothing to compare")
        return 0
    comfy = comfy_harness.boot_comfyui(comfy_path, ("--cpu", "--fp32-text-enc", "--fp32-unet"))
    comfy.load_builtin_extras(["nodes_mask.py"])
    pack = comfy_harness.load_pack(REPO, comfy)
    if (why := load_other_pack(others[0])) is not None:
        print(f"SKIP: {others[0]}: {why}")
        return 0
    import asyncio

    asyncio.run(comfy.nodes.load_custom_node(str(TEST_NODES_DIR), module_parent="custom_nodes"))
    comfy.nodes.NODE_CLASS_MAPPINGS["DropMiddleAttn2"] = DropMiddleAttn2
    migrate = importlib.import_module(f"{pack.module.__name__}.ip_adapter.migrate")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_models(root / "models")
        fp = comfy.folder_paths
        for name in ("checkpoints", "ipadapter", "clip_vision"):
            fp.add_model_folder_path(name, str(root / "models" / name), is_default=True)
            fp.filename_list_cache.pop(name, None)
        (root / "input").mkdir()
        (root / "output").mkdir()
        fp.set_input_directory(str(root / "input"))
        fp.set_output_directory(str(root / "output"))
        write_inputs(root / "input")
        runner = PromptRunner()
        plain = sampled(runner, incumbent_graph("base", {}, {}, with_adapter=False))
        rows = []
        for option, (adapter, changes, extra) in OPTIONS.items():
            if args.only and not any(option.startswith(prefix) for prefix in args.only):
                continue
            original = incumbent_graph(adapter, changes, extra)
            converted, report = migrate.convert(original)
            assert not report.needs_incumbent, report.text()
            ref = sampled(runner, original)
            effect = float((ref - plain).abs().max())
            row = {"option": option, "adapter": adapter, "effect": effect}
            row["rel"] = float((sampled(runner, converted) - ref).abs().max()) / effect
            row["rel_middle_off"] = float((sampled(runner, variant(converted, True, False)) - ref).abs().max()) / effect
            if adapter == "plus":
                row["rel_middle_off_black_negative"] = float(
                    (sampled(runner, variant(converted, True, True)) - ref).abs().max()) / effect
            rows.append(row)
            row["abs_middle_off"] = row["rel_middle_off"] * effect
            print(f"{option:32} effect {effect:8.4f}  rel {row['rel']:.2e}  middle off {row['rel_middle_off']:.2e}"
                  f" (abs {row['abs_middle_off']:.1e})"
                  + (f"  + black negative {row['rel_middle_off_black_negative']:.2e}"
                     if "rel_middle_off_black_negative" in row else ""), flush=True)
    final = [r.get("rel_middle_off_black_negative", r["rel_middle_off"]) for r in rows]
    verdict = "PASS" if max(final) <= TARGET else "FAIL"
    print(f"{verdict}: with the deliberate differences taken out, max rel = {max(final):.2e} (target {TARGET:g})")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "target": TARGET, "torch": torch.__version__,
                                         "comfyui": str(comfy_path), "incumbent": str(others[0])}, indent=1))
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
