"""Model files in workflows: what the frontend's missing-models dialog needs, and servers with or without them.

The frontend (1.35, `app.loadGraphData`) collects, for every node, the entries of
``properties.models`` whose ``name`` is one of the node's current widget values (plus a
top-level ``models`` list), then asks the server which files each ``directory`` holds and
lists every missing one in the "missing models" dialog as ``<directory> / <name>`` with a
Download button. An entry is ``{"name", "url", "directory"}`` (``hash``/``hash_type``
optional); downloads are offered only for ``url`` on ``https://huggingface.co/``,
``https://civitai.com/`` or ``http://localhost:`` and names ending ``.safetensors``/``.sft``.
A directory the server does not know is shown as "Invalid directory specified".

One exception, kept narrow: a file whose authors publish it only as a pickle
(`PublishedFile.pickle_only` in ``ip_adapter/published.py``, the InstantX SD3.5 adapter)
cannot be a ``.safetensors`` name; it still needs its entry (the dialog lists it with the
source, without a Download button) and the entry must point at exactly that published file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from . import workflow_files as wf
from .frontend import FRONTEND_SETTINGS
from .pack import import_pack

MODEL_SUFFIXES = (".safetensors", ".sft", ".bin", ".pt", ".pth", ".ckpt", ".gguf")
DOWNLOADABLE_SUFFIXES = (".safetensors", ".sft")
ALLOWED_SOURCES = ("https://huggingface.co/", "https://civitai.com/", "http://localhost:")


def model_values(node: Mapping[str, Any]) -> list[str]:
    """The node's widget values that name a model file."""
    return [v for v in node.get("widgets_values") or [] if isinstance(v, str) and v.lower().endswith(MODEL_SUFFIXES)]


def metadata_problems(workflow: Mapping[str, Any]) -> list[str]:
    """Model files a UI workflow loads without a downloadable ``properties.models`` entry."""
    problems = []
    for node in workflow["nodes"]:
        where = f"node {node['id']} ({node['type']})"
        entries = {m.get("name"): m for m in node.get("properties", {}).get("models", [])}
        for value in model_values(node):
            entry = entries.get(value)
            if entry is None:
                problems.append(f"{where}: '{value}' has no properties.models entry")
                continue
            if not str(entry.get("url", "")).startswith(ALLOWED_SOURCES):
                problems.append(f"{where}: '{value}' url {entry.get('url')!r} is not on {ALLOWED_SOURCES}")
            if not value.endswith(DOWNLOADABLE_SUFFIXES) and not _published_pickle(value, entry):
                problems.append(f"{where}: '{value}' cannot be downloaded by the frontend (not .safetensors/.sft)")
            if not entry.get("directory"):
                problems.append(f"{where}: '{value}' has no directory")
    return problems


def _published_pickle(value: str, entry: Mapping[str, Any]) -> bool:
    """True for a file published only as a pickle, when the entry names its real source and folder."""
    import_pack()
    from ipadapter_pack.ip_adapter.published import published

    source = published(value)
    return (source is not None and source.pickle_only and entry.get("url") == source.url
            and entry.get("directory") == source.folder)


def models_of(paths: Iterable[Path]) -> set[tuple[str, str]]:
    """(directory, name) of every model the workflows load, from their metadata."""
    out = set()
    for path in paths:
        for node in wf.load(path)["nodes"]:
            values = set(model_values(node))
            out |= {(m["directory"], m["name"]) for m in node.get("properties", {}).get("models", [])
                    if m["name"] in values}
    return out


def fill_base_dir(base: Path, paths: Iterable[Path], with_models: bool = True) -> None:
    """A server base dir: frontend settings, input images, and (optionally) empty files under each model name.

    The model folders always exist (the dialog needs to know the directory), empty when
    ``with_models`` is False.
    """
    paths = list(paths)
    (base / "user" / "default").mkdir(parents=True, exist_ok=True)
    (base / "user" / "default" / "comfy.settings.json").write_text(json.dumps(FRONTEND_SETTINGS))
    wanted = set(models_of(paths))
    for path in paths:  # files a workflow names without metadata (metadata_problems reports those)
        twin = wf.api_twin(path)
        for node in (wf.load(twin).values() if twin.exists() else []):
            wanted |= {(wf.MODEL_FILE_WIDGETS[k], v) for k, v in node["inputs"].items()
                       if k in wf.MODEL_FILE_WIDGETS and isinstance(v, str)}
    for directory, name in wanted:
        (base / "models" / directory).mkdir(parents=True, exist_ok=True)
        if with_models:
            (base / "models" / directory / name).touch()
    for path in paths:
        for node in wf.load(path)["nodes"]:
            if node["type"].startswith("LoadImage"):  # LoadImage(Mask): the first widget is the file
                (base / "input").mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (64, 64), (90, 120, 150)).save(base / "input" / node["widgets_values"][0])
