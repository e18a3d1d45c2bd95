"""Another IP-Adapter pack in the same ComfyUI, patched with the same checkpoints for bench_ipadapter.py.

Supported: cubiq's ComfyUI_IPAdapter_plus (node ids `IPAdapterModelLoader` and
`IPAdapterAdvanced`), the pack this one replaces. Its patched models join our variants in
the same interleaved rounds, so both are timed by the same code on the same UNet.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from support import comfy_harness, unets

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
LOADER, APPLY = "IPAdapterModelLoader", "IPAdapterAdvanced"


def find_other_packs(comfy_path: Path) -> list[Path]:
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


def load_other_pack(pack: Path) -> str | None:
    """Register the pack's nodes as ComfyUI does at start-up; None if usable, else why not."""
    comfy = comfy_harness.booted()
    ok = asyncio.run(comfy.nodes.load_custom_node(str(pack), ignore=set(comfy.builtin_node_ids),
                                                  module_parent="custom_nodes"))
    mapping = comfy.nodes.NODE_CLASS_MAPPINGS
    if not ok:
        return "ComfyUI could not import it (see the log above)"
    if LOADER not in mapping or APPLY not in mapping:
        return f"no {LOADER}/{APPLY} nodes: not ComfyUI_IPAdapter_plus's node API"
    return None


def slots_hit(model, base: str) -> tuple[int, int]:
    """(attn2 replace keys registered, of which ComfyUI's UNet really calls).

    ComfyUI 0.8.0 keys the middle block ("middle", 0); a key it never looks up is never run.
    """
    registered = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    real = unets.SD15_ATTN2_SLOTS if base == "sd15" else unets.SDXL_ATTN2_SLOTS
    # Looked up as (block, number, transformer index) first, then (block, number).
    real_keys = {(*s[:2], s[2] if len(s) == 3 else 0) for s in real} | {tuple(s[:2]) for s in real}
    return len(registered), sum(1 for key in registered if tuple(key) in real_keys)


def other_pack_models(pack_name: str, model, base: str, files: dict[str, str], image: torch.Tensor,
                      clip_vision_for: Callable[[str], object], stacks: tuple[int, ...]) -> tuple[dict, dict]:
    """Patched models named '<kind> x<n> [pack]', and facts (load time, slots hit) per kind.

    Same checkpoints, reference image, weight (0.8) and whole schedule as our variants;
    weight_type 'linear' and 'V only' scaling are that pack's plain IP-Adapter path.
    """
    import time

    models, facts = {}, {}
    for kind, file_name in files.items():
        start = time.perf_counter()
        (ipadapter,) = comfy_harness.run_node(LOADER, ipadapter_file=file_name)
        load_s = time.perf_counter() - start
        current = model
        for count in range(1, max(stacks) + 1):
            start = time.perf_counter()
            current = comfy_harness.run_node(  # returns (MODEL, image) though it declares only MODEL
                APPLY, model=current, ipadapter=ipadapter, image=image, weight=0.8, weight_type="linear",
                combine_embeds="concat", start_at=0.0, end_at=1.0, embeds_scaling="V only",
                clip_vision=clip_vision_for(kind))[0]
            if count == 1:
                facts[kind] = {"load_s": load_s, "apply_s": time.perf_counter() - start,
                               "slots_registered_hit": slots_hit(current, base)}
            if count in stacks:
                models[f"{kind} x{count} [{pack_name}]"] = current
    return models, facts
