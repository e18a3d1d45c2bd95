"""Which inputs of the workflow change, and the list of items to run. Pure: no network, no torch.

An *address* names one input of one node in an API-format workflow: `NODE.INPUT`, where NODE is
a node id (`"10"`), a node title (`_meta.title`, e.g. `Positive`) or a class type (`KSampler`).
Titles and classes must match exactly one node; ambiguity is an error naming the candidates,
never a silent pick. Values are coerced to the type of the value already in the workflow, so
CSV text `"7"` becomes the int 7 for a seed.

Items are the cartesian product of the grid axes, times the rows of a CSV/JSONL list if one is
given, plus fixed `--set` values. Inputs of `LoadImage`-style nodes take *local files*; the
runner uploads them under a content-addressed name, so an item's id (a hash of its final prompt)
changes when an image's content changes and stays the same across runs otherwise.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IMAGE_LOADERS = frozenset({"LoadImage", "LoadImageMask", "LoadImageOutput"})
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class PlanError(ValueError):
    """A workflow, address, value or list file the batch cannot use; the message says how to fix it."""


@dataclass(frozen=True)
class Target:
    """One node input, resolved from the address the user wrote."""

    node_id: str
    input: str
    class_type: str
    address: str

    @property
    def is_image(self) -> bool:
        """An input that takes a file uploaded to the server's input folder."""
        return self.class_type in IMAGE_LOADERS and self.input == "image"

    def describe(self) -> str:
        return f"node {self.node_id} ({self.class_type}) input {self.input!r}"


@dataclass(frozen=True)
class Item:
    """One queued prompt: its position and the value of every substituted input."""

    index: int
    values: tuple[tuple[Target, Any], ...]

    def inputs(self) -> dict[str, Any]:
        """address -> value, as the manifest records it (image values are local paths)."""
        return {t.address: (str(v) if isinstance(v, Path) else v) for t, v in self.values}


@dataclass
class Plan:
    """Items plus the workflow they apply to."""

    workflow: dict[str, Any]
    items: list[Item] = field(default_factory=list)


def load_workflow(path: Path) -> dict[str, Any]:
    """Read an API-format workflow ("Export (API)"), refusing the UI format with the fix."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PlanError(f"cannot read workflow {path}: {exc}") from None
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        raise PlanError(f"{path} is a UI-format workflow; export it with 'Export (API)' (or use workflows/api/)")
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
        data = data["prompt"]
    if not isinstance(data, dict) or not all(isinstance(n, dict) and "class_type" in n for n in data.values()):
        raise PlanError(f"{path} is not an API-format workflow (node id -> {{class_type, inputs}})")
    return data


def _title(node: Mapping[str, Any]) -> str | None:
    return (node.get("_meta") or {}).get("title")


def _candidates(workflow: Mapping[str, Any]) -> str:
    return ", ".join(f"{i} ({n['class_type']}" + (f", '{_title(n)}')" if _title(n) else ")")
                     for i, n in workflow.items())


def resolve(workflow: Mapping[str, Any], address: str) -> Target:
    """`NODE.INPUT` -> Target; NODE is an id, else a unique title, else a unique class type."""
    node_ref, dot, input_name = address.rpartition(".")
    if not dot or not node_ref or not input_name:
        raise PlanError(f"address {address!r}: expected NODE.INPUT (NODE = node id, title or class), e.g. KSampler.seed")
    if node_ref in workflow:
        ids = [node_ref]
    else:
        ids = [i for i, n in workflow.items() if _title(n) == node_ref]
        ids = ids or [i for i, n in workflow.items() if n["class_type"] == node_ref]
    if not ids:
        raise PlanError(f"address {address!r}: no node with id, title or class {node_ref!r}; nodes: {_candidates(workflow)}")
    if len(ids) > 1:
        raise PlanError(f"address {address!r}: {node_ref!r} matches nodes {', '.join(ids)}; "
                        "use the node id or give the node a unique title")
    node = workflow[ids[0]]
    inputs = node.get("inputs", {})
    if input_name not in inputs:
        raise PlanError(f"address {address!r}: node {ids[0]} ({node['class_type']}) has no input {input_name!r}; "
                        f"inputs: {', '.join(inputs) or 'none'}")
    if isinstance(inputs[input_name], list):
        raise PlanError(f"address {address!r}: input {input_name!r} of node {ids[0]} is linked to node "
                        f"{inputs[input_name][0]}; only widget values can be substituted")
    return Target(ids[0], input_name, node["class_type"], address)


def default_address(workflow: Mapping[str, Any], what: str) -> str:
    """The address `--images/--seeds/--weights/--prompts` use when no `--X-input` is given."""
    def only(ids: list[str], hint: str) -> str:
        if len(ids) != 1:
            found = ", ".join(ids) or "none"
            raise PlanError(f"cannot tell which node takes the {what} (candidates: {found}); pass --{hint}-input NODE.INPUT")
        return ids[0]

    nodes = workflow.items()
    if what == "image":
        return only([i for i, n in nodes if n["class_type"] in IMAGE_LOADERS], "image") + ".image"
    if what == "seed":
        ids = [f"{i}.{k}" for i, n in nodes for k in ("seed", "noise_seed")
               if not isinstance(n.get("inputs", {}).get(k, []), list)]
        return only(ids, "seed")
    if what == "weight":
        return only([i for i, n in nodes if n["class_type"] == "ApplyIPAdapter"], "weight") + ".weight"
    if what == "prompt":
        ids = [i for i, n in nodes if (_title(n) or "").lower() == "positive" and "text" in n.get("inputs", {})]
        ids = ids or [i for i, n in nodes if n["class_type"] == "CLIPTextEncode"]
        return only(ids, "prompt") + ".text"
    raise ValueError(what)


def coerce(current: Any, raw: Any, target: Target) -> Any:
    """Give `raw` the type of the workflow's current value (CSV and command lines carry text)."""
    if not isinstance(raw, str) or isinstance(current, str) or current is None:
        return raw
    try:
        if isinstance(current, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1")
        if isinstance(current, int):
            return int(raw)
        if isinstance(current, float):
            return float(raw)
    except ValueError:
        raise PlanError(f"{target.describe()}: {raw!r} is not a {type(current).__name__}") from None
    return raw


def parse_list(text: str, what: str) -> list[str]:
    """`1,2,5-7` -> ['1', '2', '5', '6', '7'] for seeds; plain comma split otherwise."""
    out: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        lo, dash, hi = part.partition("-")
        if what == "seed" and dash and lo.isdigit() and hi.isdigit():
            out += [str(s) for s in range(int(lo), int(hi) + 1)]
        else:
            out.append(part)
    if not out:
        raise PlanError(f"empty list of {what}s: {text!r}")
    return out


def image_files(folder: Path) -> list[Path]:
    """The images in `folder`, sorted by name (the order of the batch)."""
    if not Path(folder).is_dir():
        raise PlanError(f"--images {folder}: not a folder")
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise PlanError(f"--images {folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV (header = addresses) or JSONL (one object per line) list file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise PlanError(f"--list {path}: {exc}") from None
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise PlanError(f"--list {path} line {number}: {exc}") from None
                if not isinstance(row, dict):
                    raise PlanError(f"--list {path} line {number}: expected an object of address -> value")
                rows.append(row)
    else:
        rows = [dict(r) for r in csv.DictReader(text.splitlines())]
    if not rows:
        raise PlanError(f"--list {path}: no rows")
    return rows


def _value(workflow: Mapping[str, Any], target: Target, raw: Any, base_dir: Path) -> Any:
    if target.is_image:
        path = Path(raw) if Path(raw).is_absolute() else base_dir / raw
        if not path.is_file():
            raise PlanError(f"{target.describe()}: image file {path} not found")
        return path
    return coerce(workflow[target.node_id]["inputs"][target.input], raw, target)


def build_plan(
    workflow: dict[str, Any],
    axes: Sequence[tuple[str, Sequence[Any]]] = (),
    fixed: Sequence[tuple[str, Any]] = (),
    rows: Iterable[Mapping[str, Any]] | None = None,
    rows_dir: Path = Path("."),
) -> Plan:
    """Expand (list rows) x (grid axes), each item also taking the `fixed` values."""
    def targets(addresses: Iterable[str]) -> list[Target]:
        return [resolve(workflow, a) for a in addresses]

    fixed_t = list(zip(targets(a for a, _ in fixed), (v for _, v in fixed)))
    axes_t = list(zip(targets(a for a, _ in axes), (vs for _, vs in axes)))
    row_list = list(rows) if rows is not None else [{}]
    row_targets = {a: resolve(workflow, a) for a in {k for r in row_list for k in r}}
    seen: dict[tuple[str, str], str] = {}
    for t in [t for t, _ in fixed_t + axes_t] + list(row_targets.values()):
        key = (t.node_id, t.input)
        if key in seen:
            raise PlanError(f"{t.describe()} is set twice ({seen[key]!r} and {t.address!r})")
        seen[key] = t.address
    fixed_v = [(t, _value(workflow, t, v, Path("."))) for t, v in fixed_t]
    axes_v = [[(t, _value(workflow, t, v, Path("."))) for v in vs] for t, vs in axes_t]
    items: list[Item] = []
    for row in row_list:
        row_v = [(row_targets[a], _value(workflow, row_targets[a], v, rows_dir)) for a, v in row.items()]
        for combo in itertools.product(*axes_v):
            items.append(Item(len(items), tuple(fixed_v + row_v + list(combo))))
    return Plan(workflow=workflow, items=items)


def upload_name(path: Path) -> str:
    """The name an image gets on the server: its stem plus a hash of its bytes (re-uploads are no-ops)."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
    return f"{Path(path).stem}_{digest}{Path(path).suffix.lower()}"


def apply(workflow: Mapping[str, Any], item: Item, upload_names: Mapping[Path, str]) -> dict[str, Any]:
    """The prompt for `item`: a copy of the workflow with its values in place."""
    prompt = json.loads(json.dumps(workflow))
    for target, value in item.values:
        prompt[target.node_id]["inputs"][target.input] = upload_names[value] if target.is_image else value
    return prompt


def item_id(prompt: Mapping[str, Any]) -> str:
    """Stable id: a hash of the final prompt (`_meta` titles excluded), so a resumed batch matches."""
    canonical = {k: {"class_type": n["class_type"], "inputs": n.get("inputs", {})} for k, n in prompt.items()}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()[:16]
