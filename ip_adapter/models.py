"""The model check: which adapters and CLIP vision files are there, which pairs are ready, what is missing.

Run from the pack folder (`ComfyUI/custom_nodes/<pack>`):

    python -m ip_adapter.models                  # ComfyUI two folders up, plus its extra_model_paths.yaml
    python -m ip_adapter.models --comfyui ~/ComfyUI --json
    python -m ip_adapter.models --ipadapter DIR --clip-vision DIR

Files are recognised by their tensor shapes (`probe`), never their names, in every
subfolder. The same report feeds the auto-pairing loader's error and the HTTP route
`/ip_adapter/models` (nodes/routes.py), where ComfyUI supplies the folders.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .folders import comfy_model_folders
from .probe import MODEL_SUFFIXES, Probe, ProbeCache
from .published import ADAPTERS, ENCODERS, PublishedFile

ADAPTER_FOLDER = "ipadapter"
ENCODER_FOLDER = "clip_vision"
#: What to download first when there is no adapter at all.
STARTER_ADAPTER = ADAPTERS["ip-adapter_sd15.safetensors"]


def list_model_files(folders: Mapping[str, Iterable[str]]) -> list[tuple[str, str]]:
    """(folder name, path) of every model file under each folder's directories, recursively, sorted."""
    found: list[tuple[str, str]] = []
    seen: set[str] = set()
    for folder, directories in folders.items():
        for directory in directories:
            for root, dirs, files in os.walk(directory, followlinks=True):
                dirs.sort()
                for name in sorted(files):
                    path = os.path.abspath(os.path.join(root, name))
                    if name.lower().endswith(MODEL_SUFFIXES) and path not in seen:
                        seen.add(path)
                        found.append((folder, path))
    return found


def pick_encoder(adapter: Probe, encoders: Iterable[Probe]) -> list[Probe]:
    """The encoder files that fit `adapter`, the published name first, then by path."""
    assert adapter.spec is not None
    wanted = adapter.spec.encoder
    fitting = [e for e in encoders if e.kind == "encoder" and e.encoder == wanted]
    published_name = ENCODERS[wanted].name if wanted in ENCODERS else None
    return sorted(fitting, key=lambda e: (e.name != published_name, e.path))


def source_for(encoder: str) -> PublishedFile | None:
    return ENCODERS.get(encoder)


def _relative(path: str, folders: Mapping[str, Iterable[str]]) -> str:
    """`clip_vision/sub/x.safetensors` for a file under a known folder, else the full path."""
    for folder, directories in folders.items():
        for directory in directories:
            directory = os.path.abspath(directory)
            if path.startswith(directory + os.sep):
                return f"{folder}/{os.path.relpath(path, directory).replace(os.sep, '/')}"
    return path


def no_encoder_message(adapter: Probe, looked_at: list[Probe], folders: Mapping[str, Iterable[str]]) -> str:
    """The loader's error: what was needed, each file looked at and what it is, what to download."""
    assert adapter.spec is not None
    wanted = adapter.spec.encoder
    lines = [f"No CLIP vision file fits '{adapter.name}' ({adapter.spec.describe()}): it needs {wanted}."]
    if looked_at:
        lines.append("Looked at:")
        lines += [f"  {_relative(p.path, folders)}: {p.what}" for p in looked_at]
    else:
        where = ", ".join(str(d) for d in folders.get(ENCODER_FOLDER, [])) or "models/clip_vision"
        lines.append(f"There is no model file in {where}.")
    source = source_for(wanted)
    if source is not None:
        lines.append(f"Fix: {source.how_to_get()}, then press R in ComfyUI (or restart).")
    else:
        lines.append(f"Fix: put a {wanted} CLIP vision file in models/clip_vision/.")
    return "\n".join(lines)


@dataclass(frozen=True)
class AdapterStatus:
    """One adapter file: what it is, the encoder files that fit, and what to download if none."""

    probe: Probe
    encoders: tuple[Probe, ...]
    missing: PublishedFile | None
    missing_encoder: str | None = None  # tower name when nothing fits and nothing is published for it
    misplaced: tuple[Probe, ...] = ()  # fitting encoders in another model folder (move, don't download)

    @property
    def ready(self) -> bool:
        return bool(self.encoders)


@dataclass
class ModelReport:
    folders: dict[str, list[str]]
    adapters: list[AdapterStatus] = field(default_factory=list)
    encoders: list[Probe] = field(default_factory=list)
    others: list[tuple[str, Probe]] = field(default_factory=list)  # (folder, probe): unusable or misplaced

    @property
    def missing(self) -> list[PublishedFile]:
        files = {s.missing.name: s.missing for s in self.adapters if s.missing is not None}
        if not self.adapters:
            files[STARTER_ADAPTER.name] = STARTER_ADAPTER
            if not any(e.encoder == "ViT-H/14" for e in self.encoders):
                files[ENCODERS["ViT-H/14"].name] = ENCODERS["ViT-H/14"]
        return list(files.values())

    def as_dict(self) -> dict[str, Any]:
        """JSON for the HTTP route and `--json`; paths relative to their model folder."""
        rel = lambda p: _relative(p.path, self.folders)  # noqa: E731 -- one-line local helper
        return {
            "folders": self.folders,
            "adapters": [{"file": rel(s.probe), "what": s.probe.what, "ready": s.ready,
                          "needs": s.probe.spec.encoder if s.probe.spec else None,
                          "encoders": [rel(e) for e in s.encoders],
                          "misplaced_encoders": [rel(e) for e in s.misplaced]} for s in self.adapters],
            "encoders": [{"file": rel(e), "what": e.what, "tower": e.encoder} for e in self.encoders],
            "other_files": [{"file": rel(p), "what": p.what, "hint": _misplaced_hint(folder, p)}
                            for folder, p in self.others],
            "missing": [{"name": f.name, "repo": f.repo, "path": f.path, "url": f.url,
                         "folder": f.folder, "rename": f.renamed} for f in self.missing],
            "ready": sum(s.ready for s in self.adapters),
        }

    def format(self) -> str:
        """The text the command prints."""
        data = self.as_dict()
        out = ["Model folders:"]
        out += [f"  {name}: {', '.join(dirs) or '(none)'}" for name, dirs in self.folders.items()]
        out.append(f"\nIP-Adapters ({len(data['adapters'])}, {data['ready']} ready):")
        for a in data["adapters"]:
            pair = f"ready with {a['encoders'][0]}" if a["ready"] else f"NOT READY: needs a {a['needs']} CLIP vision file"
            if a["misplaced_encoders"]:
                pair += f"; {a['misplaced_encoders'][0]} is one: move it to models/{ENCODER_FOLDER}/"
            out.append(f"  {a['file']}\n      {a['what']}\n      {pair}")
        if not data["adapters"]:
            out.append("  (none)")
        out.append(f"\nCLIP vision files ({len(data['encoders'])}):")
        out += [f"  {e['file']}\n      {e['what']}" for e in data["encoders"]] or ["  (none)"]
        if data["other_files"]:
            out.append("\nOther files:")
            for o in data["other_files"]:
                out.append(f"  {o['file']}\n      {o['what']}" + (f"\n      {o['hint']}" if o["hint"] else ""))
        if data["missing"]:
            out.append("\nMissing (download, then press R in ComfyUI or restart it):")
            for m in data["missing"]:
                rename = f"\n      save it as {m['name']} (the repository calls it {m['path']})" if m["rename"] else ""
                out.append(f"  {m['folder']}/{m['name']}\n      from {m['repo']}: {m['path']}\n      {m['url']}{rename}")
        elif all(a["ready"] for a in data["adapters"]):
            out.append("\nNothing missing: every adapter has its CLIP vision file.")
        else:
            out.append("\nNothing to download: move the files named above.")
        return "\n".join(out)


def _misplaced_hint(folder: str, probe: Probe) -> str:
    if probe.kind == "adapter" and folder != ADAPTER_FOLDER:
        return f"an IP-Adapter in models/{folder}: move it to models/{ADAPTER_FOLDER}/"
    if probe.kind == "encoder" and folder != ENCODER_FOLDER:
        return f"a CLIP vision file in models/{folder}: move it to models/{ENCODER_FOLDER}/"
    return ""


def build_report(folders: Mapping[str, list[str]], cache: ProbeCache | None = None) -> ModelReport:
    """Probe every file in the `ipadapter` and `clip_vision` folders and pair adapters with encoders."""
    cache = cache or ProbeCache()
    report = ModelReport(folders={k: list(v) for k, v in folders.items()})
    probes = [(folder, cache.probe(path)) for folder, path in list_model_files(folders)]
    report.encoders = [p for folder, p in probes if folder == ENCODER_FOLDER and p.kind == "encoder"]
    elsewhere = [p for folder, p in probes if folder != ENCODER_FOLDER and p.kind == "encoder"]
    for folder, p in probes:
        if folder == ADAPTER_FOLDER and p.kind == "adapter" and p.spec is not None:
            fitting = tuple(pick_encoder(p, report.encoders))
            misplaced = () if fitting else tuple(pick_encoder(p, elsewhere))
            wanted = p.spec.encoder
            missing = None if fitting or misplaced else source_for(wanted)
            unpublished = None if fitting or misplaced or missing else wanted
            report.adapters.append(AdapterStatus(p, fitting, missing, unpublished, misplaced))
        elif not (folder == ENCODER_FOLDER and p.kind == "encoder"):
            report.others.append((folder, p))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ip_adapter.models", description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", help="ComfyUI folder (default: COMFYUI_PATH, else two folders above the pack)")
    parser.add_argument("--ipadapter", action="append", default=[], help="an adapter folder (repeatable)")
    parser.add_argument("--clip-vision", action="append", default=[], help="a CLIP vision folder (repeatable)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)
    if args.ipadapter or args.clip_vision:
        folders = {ADAPTER_FOLDER: args.ipadapter, ENCODER_FOLDER: args.clip_vision}
    else:
        pack = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        root = args.comfyui or os.environ.get("COMFYUI_PATH") or os.path.dirname(os.path.dirname(pack))
        if not os.path.isfile(os.path.join(root, "folder_paths.py")):
            print(f"error: {root} is not a ComfyUI folder (no folder_paths.py). Run this from "
                  "ComfyUI/custom_nodes/<pack>, or pass --comfyui PATH, or --ipadapter/--clip-vision DIR.",
                  file=sys.stderr)
            return 2
        folders = comfy_model_folders(root, (ADAPTER_FOLDER, ENCODER_FOLDER))
    report = build_report(folders)
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
