"""UI format (what the frontend's "Save" writes): nodes with positional widgets_values, a link table.

Nodes the conversion does not touch are copied byte for byte; replacements sit where the old
node was (several stacked downwards), keep its mode, and the links are rebuilt for them.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from .engine import NewNode, Plan
from .graph import Graph, Link, MigrationError, NewRef, Node
from .presets import MODEL_LOADERS
from .tables import INCUMBENT, OUR_DEFAULTS, OURS, NodeTable

GAP = 40


def is_ui(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and isinstance(data.get("links"), list)


def _links(data: dict[str, Any]) -> Iterator[tuple[int, int, int, int, int, Any]]:
    for i, link in enumerate(data["links"]):
        if isinstance(link, dict):  # newer frontends may save links as objects
            link = [link.get(k) for k in ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")]
        if not isinstance(link, list) or len(link) < 6:
            raise MigrationError(f"links[{i}] is {link!r}: expected [id, from node, from slot, to node, to slot, type]")
        yield tuple(link[:6])  # type: ignore[misc]


def read(data: dict[str, Any]) -> Graph:
    sources = {lid: (str(src), int(slot)) for lid, src, slot, _, _, _ in _links(data)}
    graph = Graph()
    for i, node in enumerate(data["nodes"]):
        if not isinstance(node, dict) or "id" not in node or not isinstance(node.get("type"), str):
            raise MigrationError(f"nodes[{i}] has no id or type: not a ComfyUI workflow node")
        node_id, type_ = str(node["id"]), node["type"]
        inputs: dict[str, Any] = {}
        ok, problem, note = True, "", ""
        table = INCUMBENT.get(type_)
        values = node.get("widgets_values", [])
        if table is not None:
            if isinstance(values, dict):
                inputs.update({k: v for k, v in values.items() if k in table.widgets})
            elif len(values) == len(table.widgets):
                inputs.update(zip(table.widgets, values))
            elif _older_release(table, values):
                missing = dict(table.later[len(values) - len(table.widgets):])
                inputs.update(zip(table.widgets, list(values) + list(missing.values())))
                note = "saved by an older release: " + ", ".join(f"{k} '{v}' (its default then)" for k, v in missing.items())
            else:
                ok, problem = False, (f"its {len(values)} saved widget values do not match the last release of "
                                      f"ComfyUI_IPAdapter_plus ({len(table.widgets)}: {', '.join(table.widgets)}); "
                                      "open and save it there once, then convert again")
        if type_ in MODEL_LOADERS and isinstance(values, list) and len(values) > MODEL_LOADERS[type_][1]:
            name, index = MODEL_LOADERS[type_]
            inputs[name] = values[index]  # only read, to tell SD1.5 from SDXL
        for slot in node.get("inputs") or []:
            link = slot.get("link")
            if link is not None:
                if link not in sources:
                    raise MigrationError(f"node {node_id} input '{slot.get('name')}' uses link {link}, which is "
                                         "not in the links table; the file is damaged")
                inputs[slot.get("name", "")] = Link(*sources[link])
        graph.nodes[node_id] = Node(node_id, type_, inputs, node.get("title"), ok, problem, int(node.get("mode", 0)),
                                    note)
    return graph


def _older_release(table: NodeTable, values: list) -> bool:
    """True when `values` lack only trailing widgets that later releases added."""
    missing = len(table.widgets) - len(values)
    return 0 < missing <= len(table.later) and all(
        name == widget for (name, _), widget in zip(table.later[-missing:], table.widgets[-missing:]))


def write(data: dict[str, Any], plan: Plan) -> dict[str, Any]:
    out = copy.deepcopy(data)
    out["links"] = [list(link) for link in _links(out)]
    by_id = {str(n["id"]): n for n in out["nodes"]}
    dead = {link[0] for link in out["links"] if str(link[1]) in plan.removed or str(link[3]) in plan.removed}
    out["links"] = [link for link in out["links"] if link[0] not in dead]
    for node in by_id.values():
        for slot in node.get("outputs") or []:
            if slot.get("links"):
                slot["links"] = [lid for lid in slot["links"] if lid not in dead]
        for slot in node.get("inputs") or []:
            if slot.get("link") in dead:
                slot["link"] = None
    out["nodes"] = [n for n in out["nodes"] if str(n["id"]) not in plan.removed]
    next_id = max((int(n["id"]) for n in data["nodes"] if str(n["id"]).isdigit()), default=0)
    next_id = max(next_id, int(data.get("last_node_id", 0) or 0)) + 1
    ids: dict[str, int] = {}
    for new in plan.new_nodes:
        ids[new.key] = next_id
        next_id += 1
    made = {ids[new.key]: _node(new, ids[new.key], by_id, plan) for new in plan.new_nodes}
    out["nodes"].extend(made.values())
    nodes = {int(n["id"]) if str(n["id"]).isdigit() else n["id"]: n for n in out["nodes"]}
    state = {"link": max([int(data.get("last_link_id", 0) or 0)] + [link[0] for link in out["links"]])}

    def connect(source: Any, dst: int, input_name: str) -> None:
        src, slot = (ids[source.key], source.slot) if isinstance(source, NewRef) else (int(source.node), source.slot)
        src_node = nodes[src]
        type_ = src_node["outputs"][slot]["type"]
        state["link"] += 1
        lid = state["link"]
        src_node["outputs"][slot].setdefault("links", [])
        src_node["outputs"][slot]["links"] = (src_node["outputs"][slot]["links"] or []) + [lid]
        inputs = nodes[dst]["inputs"]
        index = next(i for i, s in enumerate(inputs) if s.get("name") == input_name)
        inputs[index]["link"] = lid
        out["links"].append([lid, src, slot, dst, index, type_])

    for new in plan.new_nodes:
        for name, value in new.inputs.items():
            if isinstance(value, (Link, NewRef)):
                connect(value, ids[new.key], name)
    for node_id, node in plan.graph.nodes.items():
        if node_id in plan.removed:
            continue
        for name, value in node.inputs.items():
            if isinstance(value, Link) and value.node in plan.removed:
                source = plan.source(value)
                if source is not None:
                    connect(source, int(node_id), name)
    out["last_node_id"] = next_id - 1
    out["last_link_id"] = state["link"]
    _reorder(out)
    return out


def _node(new: NewNode, node_id: int, old: dict[str, dict], plan: Plan) -> dict[str, Any]:
    table = OURS[new.type]
    anchor = old[new.anchor]
    siblings = [n for n in plan.new_nodes if n.anchor == new.anchor]
    below = sum(OURS[n.type].size[1] + GAP for n in siblings[: siblings.index(new)])
    x, y = (anchor.get("pos") or [0, 0])[:2] if isinstance(anchor.get("pos"), list) else (0, 0)
    inputs: list[dict[str, Any]] = [{"name": name, "type": type_, "link": None, **({"shape": 7} if optional else {})}
              for name, type_, optional in table.sockets]
    for name in table.widgets:
        if isinstance(new.inputs.get(name), (Link, NewRef)):  # a widget fed by a link, as the frontend saves it
            inputs.append({"name": name, "type": _widget_type(name), "widget": {"name": name}, "link": None})
    node = {
        "id": node_id, "type": new.type, "pos": [x, y + below], "size": list(table.size), "flags": {}, "order": 0,
        "mode": new.mode, "inputs": inputs,
        "outputs": [{"name": n, "type": t, "links": [], "slot_index": i} for i, (n, t) in enumerate(table.outputs)],
        "properties": {"Node name for S&R": new.type},
        "widgets_values": [_widget_value(new, name) for name in table.widgets],
    }
    if new.type == "ApplyIPAdapter" and anchor.get("title"):
        node["title"] = anchor["title"]
    return node


def _widget_value(new: NewNode, name: str) -> Any:
    value = new.inputs.get(name, OUR_DEFAULTS.get(name))
    return OUR_DEFAULTS.get(name) if isinstance(value, (Link, NewRef)) else value


def _widget_type(name: str) -> str:
    if name == "encode_chunk":
        return "INT"
    return "FLOAT" if name in ("weight", "start_percent", "end_percent", "end_weight") else "STRING"


def _reorder(out: dict[str, Any]) -> None:
    """Execution order the frontend saves: every node after its sources (ties keep file order)."""
    deps: dict[Any, set] = {n["id"]: set() for n in out["nodes"]}
    for _, src, _, dst, _, _ in out["links"]:
        if dst in deps and src in deps:
            deps[dst].add(src)
    order: list[Any] = []
    placed: set = set()
    while len(order) < len(deps):
        ready = [nid for nid in deps if nid not in placed and deps[nid] <= placed]
        if not ready:
            return  # a cycle: leave the saved order alone
        order.extend(ready)
        placed.update(ready)
    rank = {nid: i for i, nid in enumerate(order)}
    for node in out["nodes"]:
        node["order"] = rank[node["id"]]
