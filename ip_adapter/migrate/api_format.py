"""API format (what "Export (API)" writes and POST /prompt takes): {id: {class_type, inputs}}."""

from __future__ import annotations

import copy
from typing import Any

from .engine import Plan
from .graph import Graph, Link, MigrationError, NewRef, Node

DISPLAY = {"LoadIPAdapter": "Load IP-Adapter", "CLIPVisionLoader": "Load CLIP Vision",
           "EncodeImagePrompt": "IP-Adapter Encode Image Prompt", "ApplyIPAdapter": "Apply IP-Adapter", "ImageBatch": "Batch Images"}


def is_api(data: Any) -> bool:
    return (isinstance(data, dict) and bool(data)
            and all(isinstance(v, dict) and "class_type" in v for v in data.values()))


def read(data: dict[str, Any]) -> Graph:
    graph = Graph()
    for node_id, node in data.items():
        inputs = node.get("inputs", {})
        if not isinstance(node["class_type"], str) or not isinstance(inputs, dict):
            raise MigrationError(f"API node {node_id}: class_type must be a string and inputs an object")
        parsed = {}
        for name, value in inputs.items():
            if _is_link(value):
                parsed[name] = Link(str(value[0]), int(value[1]))
            else:
                parsed[name] = value
        title = node.get("_meta", {}).get("title") if isinstance(node.get("_meta"), dict) else None
        graph.nodes[str(node_id)] = Node(str(node_id), node["class_type"], parsed, title)
    return graph


def _is_link(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
            and isinstance(value[1], int) and not isinstance(value[1], bool))


def write(data: dict[str, Any], plan: Plan) -> dict[str, Any]:
    numeric = [int(k) for k in data if str(k).isdigit()]
    next_id = max(numeric, default=0) + 1
    ids: dict[str, str] = {}
    for new in plan.new_nodes:
        ids[new.key] = str(next_id)
        next_id += 1

    def encode(value: Any) -> Any:
        if isinstance(value, NewRef):
            return [ids[value.key], value.slot]
        if isinstance(value, Link):
            return [value.node, value.slot]
        return copy.deepcopy(value)

    out: dict[str, Any] = {}
    for node_id, node in data.items():
        if str(node_id) in plan.removed:
            continue
        kept = copy.deepcopy(node)
        for name, value in plan.graph.nodes[str(node_id)].inputs.items():
            if isinstance(value, Link):
                source = plan.source(value)
                if source is None:
                    del kept["inputs"][name]
                else:
                    kept["inputs"][name] = encode(source)
        out[node_id] = kept
    for new in plan.new_nodes:
        out[ids[new.key]] = {"class_type": new.type, "inputs": {k: encode(v) for k, v in new.inputs.items()},
                             "_meta": {"title": DISPLAY.get(new.type, new.type)}}
    return out
