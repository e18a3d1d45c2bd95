"""Check the items against the server's `/object_info` before anything is uploaded or queued.

Why: with a model missing, ComfyUI refuses every prompt the same way, and the user learned it
only after the whole grid was uploaded and queued, from the same errors repeated per item. Here
every item's prompt is checked like ComfyUI's validation would (node classes installed, combo
values among the server's options, model files included; required inputs present). When no item
would pass, nothing is uploaded or queued, and identical problems are reported once with the
items they concern and a fix hint.

Images the batch uploads are not checked (they are not on the server yet).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .client import BatchError

#: Inputs whose options are files in a ComfyUI model folder: input name -> folder.
MODEL_INPUTS = {
    "ckpt_name": "checkpoints", "adapter_name": "ipadapter", "clip_name": "clip_vision / text_encoders",
    "control_net_name": "controlnet", "vae_name": "vae", "lora_name": "loras", "unet_name": "diffusion_models",
    "clip_name1": "text_encoders", "clip_name2": "text_encoders", "clip_name3": "text_encoders",
}
_FOLDER_BY_CLASS = {("CLIPVisionLoader", "clip_name"): "clip_vision", ("CLIPLoader", "clip_name"): "text_encoders"}
MODELS_HINT = ("after adding files press R in ComfyUI (or restart it); the README's Models section says where "
               "each file comes from, and `python -m ip_adapter.models` (from the pack folder) lists what "
               "ComfyUI has and what is missing")


class PreflightError(BatchError):
    """The batch would fail on the server: nothing was uploaded or queued."""

    kind = "preflight"

    def __init__(self, groups: list[tuple[str, list[int]]], total: int):
        self.groups = groups
        self.total = total
        super().__init__(format_groups(groups, total))


def folder_for(class_type: str, input_name: str) -> str | None:
    return _FOLDER_BY_CLASS.get((class_type, input_name)) or MODEL_INPUTS.get(input_name)


def _options(spec: Any) -> list[Any] | None:
    """The allowed values of a combo input spec (old list form or V3 "COMBO" with options)."""
    if not isinstance(spec, (list, tuple)) or not spec:
        return None
    kind = spec[0]
    if isinstance(kind, list):
        return kind
    if kind == "COMBO" and len(spec) > 1 and isinstance(spec[1], Mapping):
        return list(spec[1].get("options", []))
    return None


def prompt_problems(prompt: Mapping[str, Any], object_info: Mapping[str, Any],
                    skip: Iterable[tuple[str, str]] = ()) -> list[str]:
    """What ComfyUI would refuse in `prompt`, one line each with the fix where one is known."""
    skipped = set(skip)
    problems = []
    for node_id, node in prompt.items():
        class_type = node.get("class_type")
        info = object_info.get(class_type)
        where = f"node {node_id} ({class_type})"
        if info is None:
            problems.append(f"{where}: this node is not installed on the server; install the custom node pack "
                            "that provides it and restart ComfyUI")
            continue
        specs = {**(info.get("input", {}).get("optional") or {}), **(info.get("input", {}).get("required") or {})}
        inputs = node.get("inputs", {})
        for name in info.get("input", {}).get("required") or {}:
            if name not in inputs:
                problems.append(f"{where}: required input {name!r} is missing from the workflow")
        for name, value in inputs.items():
            options = _options(specs.get(name))
            if options is None or isinstance(value, list) or (node_id, name) in skipped or value in options:
                continue
            folder = folder_for(class_type, name)
            if folder is not None:
                problems.append(f"{where} input {name!r}: model file {value!r} is not on the server; "
                                f"put it in ComfyUI/models/{folder}/")
            else:
                shown = ", ".join(map(repr, options[:8])) + (" ..." if len(options) > 8 else "")
                problems.append(f"{where} input {name!r}: {value!r} is not one of {shown}")
    return problems


def group(per_item: Sequence[tuple[int, list[str]]]) -> list[tuple[str, list[int]]]:
    """Identical problems once each, with the items (indices) that have them, in first-seen order."""
    groups: dict[str, list[int]] = {}
    for index, problems in per_item:
        for problem in problems:
            groups.setdefault(problem, []).append(index)
    return list(groups.items())


def format_groups(groups: Sequence[tuple[str, Sequence[int]]], total: int) -> str:
    lines = []
    for problem, items in groups:
        which = "every item" if len(items) == total else f"items {_ranges(items)}"
        lines.append(f"{problem}  [{which}]")
    if any("model file" in problem and "is not on the server" in problem for problem, _ in groups):
        lines.append(f"hint: {MODELS_HINT}")
    return "\n".join(lines)


def _ranges(indices: Sequence[int]) -> str:
    out, start, prev = [], None, None
    for i in sorted(indices):
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            out.append(f"{start}-{prev}" if prev != start else str(start))
            start = prev = i
    if start is not None:
        out.append(f"{start}-{prev}" if prev != start else str(start))
    return ", ".join(out)


def check(prepared: Sequence[Any], object_info: Mapping[str, Any]) -> list[tuple[int, list[str]]]:
    """Raise PreflightError when every item would be refused; else return the items' predicted problems.

    A batch where only some items are wrong (a grid over adapter files, one of them absent) still
    runs: those items fail on the server with ComfyUI's own message and the others finish.
    (`prepared` items have `.item` and `.prompt`.)
    """
    per_item = []
    for prep in prepared:
        skip = [(t.node_id, t.input) for t, _ in prep.item.values if t.is_image]
        per_item.append((prep.item.index, prompt_problems(prep.prompt, object_info, skip)))
    if per_item and all(problems for _, problems in per_item):
        raise PreflightError(group(per_item), len(prepared))
    return [(index, problems) for index, problems in per_item if problems]
