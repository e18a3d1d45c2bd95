"""What a model file is, from its tensor names and shapes alone (no weights read).

Why: users rename files, nest them in subfolders and point `extra_model_paths.yaml`
at other drives, so a file's name says nothing reliable. A `.safetensors` header
(8-byte length + JSON) lists every tensor's shape; that is enough to tell an
IP-Adapter variant (`state_dict.detect_spec` run on meta tensors) or a CLIP vision
tower (width and depth) apart, in milliseconds even for a 3.7 GB file. Pickled
`.bin` files are opened with `torch.load(weights_only=True, mmap=True)`, which maps
the data without reading it and refuses code.

`ProbeCache` remembers each result by (path, size, mtime), so a folder is read once
and a replaced file is read again.
"""

from __future__ import annotations

import json
import os
import re
import struct
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .errors import AdapterFormatError
from .loading import claims_any, detect
from .spec import AdapterSpec
from .state_dict import flatten

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
MODEL_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit

Shapes = dict[str, tuple[int, ...]]

#: CLIP-family vision towers by (width, depth). Names are the ones `AdapterSpec.encoder` uses
#: (ViT-L/14 for XLabs Flux, SigLIP so400m-patch14-384 for InstantX SD3.5), so pairing is a string match.
_TOWERS: dict[tuple[int, int], str] = {
    (1280, 32): "ViT-H/14",
    (1664, 48): "ViT-bigG/14",
    (1024, 24): "ViT-L/14",
    (1152, 27): "SigLIP so400m",
}
#: Position-embedding rows that mark a higher-resolution variant of a tower.
_RESOLUTION: dict[tuple[str, int], str] = {
    ("ViT-L/14", 577): "ViT-L/14-336",
    ("SigLIP so400m", 729): "SigLIP so400m-patch14-384",  # 27 x 27 patches: the InstantX SD3.5 encoder
    ("SigLIP so400m", 1024): "SigLIP so400m-512",
}
_HF_LAYER = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.layer_norm1\.weight$")
_OPENCLIP_LAYER = re.compile(r"^visual\.transformer\.resblocks\.(\d+)\.ln_1\.weight$")


class HeaderError(ValueError):
    """The file is not a readable tensor file; the message says why."""


def read_shapes(path: str | os.PathLike[str]) -> Shapes:
    """Tensor name -> shape, from the header (safetensors) or a memory map (pickles)."""
    path = os.fspath(path)
    if path.lower().endswith(PICKLE_SUFFIXES):
        return _pickle_shapes(path)
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) < 8:
            raise HeaderError("shorter than a safetensors header (8 bytes)")
        (length,) = struct.unpack("<Q", raw)
        if length > _MAX_HEADER or 8 + length > size:
            raise HeaderError(f"header length {length} does not fit a {size}-byte file: not safetensors, or truncated")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise HeaderError(f"header is not JSON ({exc.__class__.__name__}): not safetensors") from None
    if not isinstance(header, dict):
        raise HeaderError("header is not a JSON object: not safetensors")
    shapes: Shapes = {}
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(entry, dict) or "shape" not in entry or "data_offsets" not in entry:
            raise HeaderError(f"header entry '{key}' has no shape/data_offsets: not safetensors")
        shapes[key] = tuple(int(d) for d in entry["shape"])
        end = max(end, int(entry["data_offsets"][1]))
    if 8 + length + end > size:
        raise HeaderError(f"truncated: the header needs {8 + length + end} bytes, the file has {size}; download it again")
    return shapes


def _pickle_shapes(path: str) -> Shapes:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # old (non-zip) pickles cannot be memory-mapped; still tensors only
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 -- zip, pickle and torch errors have many types
            raise HeaderError(f"not a tensor file torch can read safely ({type(exc).__name__})") from None
    except Exception as exc:  # noqa: BLE001
        raise HeaderError(f"not a tensor file torch can read safely ({type(exc).__name__})") from None
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    try:
        flat = flatten(data, source=os.path.basename(path))
    except AdapterFormatError as exc:
        raise HeaderError(str(exc)) from None
    return {key: tuple(tensor.shape) for key, tensor in flat.items()}


@dataclass(frozen=True)
class Probe:
    """What one file is. `kind` is "adapter", "encoder", "other" or "unreadable"."""

    path: str
    kind: str
    what: str  # one line for people
    spec: AdapterSpec | None = None
    encoder: str | None = None  # tower name for encoders ("ViT-H/14")

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


def encoder_of(shapes: Shapes) -> tuple[str, str] | None:
    """(tower name, layout) of a CLIP-family vision tower, or None."""
    for pattern, width_key, pos_key, layout in (
        (_HF_LAYER, "vision_model.encoder.layers.0.layer_norm1.weight",
         "vision_model.embeddings.position_embedding.weight", "transformers"),
        (_OPENCLIP_LAYER, "visual.transformer.resblocks.0.ln_1.weight", "visual.positional_embedding", "OpenCLIP"),
    ):
        depth = sum(1 for key in shapes if pattern.match(key))
        if depth and width_key in shapes:
            width = shapes[width_key][0]
            name = _TOWERS.get((width, depth), f"a {depth}-layer, {width}-wide vision tower")
            rows = shapes.get(pos_key, (0,))[0]
            return _RESOLUTION.get((name, rows), name), layout
    return None


def classify(path: str, shapes: Shapes) -> Probe:
    """Decide what the tensors describe: an IP-Adapter variant, a vision tower, or something else."""
    name = os.path.basename(path)
    with torch.device("meta"):
        tensors = {key: torch.empty(shape) for key, shape in shapes.items()}
    if claims_any(tensors):  # any family's layout: UNet, XLabs Flux, InstantX SD3.5 (InstantX Flux is refused)
        try:
            spec = detect(tensors, source=name)
        except AdapterFormatError as exc:
            return Probe(path, "other", f"an IP-Adapter file this pack cannot use: {exc}")
        return Probe(path, "adapter", f"IP-Adapter {spec.describe()}", spec=spec)
    tower = encoder_of(shapes)
    if tower is not None:
        return Probe(path, "encoder", f"CLIP vision {tower[0]} ({tower[1]} layout)", encoder=tower[0])
    sample = ", ".join(sorted(shapes)[:3])
    return Probe(path, "other", f"not an IP-Adapter or CLIP vision file ({len(shapes)} tensors: {sample}, ...)")


def probe_file(path: str | os.PathLike[str]) -> Probe:
    """Read the header of `path` and classify it; never raises for a bad file."""
    path = os.fspath(path)
    try:
        shapes = read_shapes(path)
    except (HeaderError, OSError) as exc:
        return Probe(path, "unreadable", f"unreadable: {exc}")
    return classify(path, shapes)


class ProbeCache:
    """Probes by (path, size, mtime): a file is read again only when it changed.

    Owned by whoever needs it (the ComfyUI extension, one command run); bounded so a
    server that sees thousands of files keeps the most recent ones. The HTTP route and
    the executor may use it from two threads at once, hence the lock.
    """

    def __init__(self, max_entries: int = 1024) -> None:
        self._entries: OrderedDict[tuple[str, int, int], Probe] = OrderedDict()
        self._max = max_entries
        self._lock = threading.Lock()
        self.reads = 0  # headers actually read (tests and logs)

    def probe(self, path: str | os.PathLike[str]) -> Probe:
        path = os.path.abspath(os.fspath(path))
        try:
            stat = os.stat(path)
        except OSError as exc:
            return Probe(path, "unreadable", f"unreadable: {exc.strerror or exc}")
        key = (path, stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        result = probe_file(path)  # outside the lock: a slow disk does not block the other thread
        with self._lock:
            self.reads += 1
            self._entries[key] = result
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return result
