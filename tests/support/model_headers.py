"""Full-size model files whose headers have the real published shapes, cheaply.

Why: the model check reads headers only, and must be tested on the real shapes (a
ViT-bigG tower is 3.7 GB in fp16). A file written here is a valid `.safetensors`
file: the JSON header lists every tensor of the published layout; the data section
holds random values for small tensors and is left as a sparse hole (zeros, no disk
used) beyond `random_bytes`, so a 2.5 GB file takes a few kilobytes on disk.
"""

from __future__ import annotations

import json
import struct
from math import prod
from pathlib import Path

import torch

from . import checkpoints
from .clip_vision_files import VIT_H_CONFIG, clip_vision_shapes

_ST_DTYPES = {torch.float16: ("F16", 2), torch.float32: ("F32", 4)}

#: ComfyUI's ViT-bigG/14 and ViT-L/14 vision configs (the facts that decide shapes).
VIT_BIGG_CONFIG = {**VIT_H_CONFIG, "hidden_size": 1664, "intermediate_size": 8192, "num_attention_heads": 16,
                   "num_hidden_layers": 48, "projection_dim": 1280}
VIT_L_CONFIG = {**VIT_H_CONFIG, "hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                "num_hidden_layers": 24, "projection_dim": 768}
TOWERS = {"ViT-H/14": VIT_H_CONFIG, "ViT-bigG/14": VIT_BIGG_CONFIG, "ViT-L/14": VIT_L_CONFIG}


def write_shapes(path: str | Path, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype = torch.float16,
                 random_bytes: int = 1 << 20, seed: int = 0) -> Path:
    """A safetensors file with these tensors; the first `random_bytes` of data are random, the rest a hole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    code, width = _ST_DTYPES[dtype]
    header: dict[str, object] = {}
    offset = 0
    for key, shape in shapes.items():
        size = prod(shape) * width
        header[key] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    generator = torch.Generator().manual_seed(seed)
    head = torch.randn(min(random_bytes, offset) // width, generator=generator).to(dtype)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        handle.write(head.numpy().tobytes())
        handle.truncate(8 + len(raw) + offset)
    return path


def write_tower(path: str | Path, tower: str, layout: str = "hf") -> Path:
    """A full-size CLIP vision file of `tower` ("ViT-H/14", "ViT-bigG/14", "ViT-L/14") in `layout`."""
    return write_shapes(path, clip_vision_shapes(TOWERS[tower], layout))


def write_adapter_header(path: str | Path, variant: str) -> Path:
    """A full-size IP-Adapter file (published keys and shapes) of `variant`, e.g. "ip-adapter_sd15"."""
    return write_shapes(path, checkpoints.state_dict_shapes(variant, "full"))
