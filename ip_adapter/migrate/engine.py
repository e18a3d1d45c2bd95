"""Apply the rules to a graph: which nodes are converted, kept or left, and the new nodes.

Nodes are visited sources first, so a rule sees what its inputs became. A rule either
returns a `Converted` (new nodes added through the context) or raises `Unmappable`, and
then the node stays as it was. An incumbent node that was converted is removed only when
every node reading its outputs can read the replacement; otherwise it stays beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .graph import Graph, Link, NewRef, Node, Ref
from .presets import MODEL_LOADERS, guess_base
from .report import Report
from .tables import INCUMBENT, UNMAPPED


class Unmappable(Exception):
    """This node cannot be converted; the message says why and what to do."""


#: How Encode Image Prompt should fit an image: (fit, crop_position).
Fit = tuple[str, str]
PLAIN_FIT: Fit = ("center crop", "center")


@dataclass(frozen=True)
class Embeds:
    """What an incumbent EMBEDS value holds: images with weights, combined by `method`."""

    images: tuple[tuple[Ref, float, Fit], ...]  # (image, weight, fit)
    method: str
    adapter: Ref
    clip_vision: Ref | None
    negative: bool = False  # the encoder's neg_embed output (its default unconditional)


@dataclass
class Converted:
    """What a converted node's outputs became."""

    outputs: dict[int, Ref] = field(default_factory=dict)
    #: Output slots whose replacement any consumer of the old output can take (same type, same value).
    compatible: frozenset[int] = frozenset()
    adapter: Ref | None = None  # our adapter, for an IPADAPTER output
    clip_vision: Ref | None = None  # the CLIP vision that comes with an IPADAPTER output
    embeds: dict[int, Embeds] = field(default_factory=dict)
    fit: Fit | None = None  # PrepImageForClipVision: how the encoder should fit the image
    note: str = ""


@dataclass
class NewNode:
    key: str
    type: str
    inputs: dict[str, Any]
    anchor: str
    mode: int = 0


@dataclass
class Plan:
    graph: Graph
    new_nodes: list[NewNode]
    converted: dict[str, Converted]
    removed: set[str]
    report: Report

    def source(self, value: Any) -> Any:
        """Where a kept node's input reads from after the rewrite."""
        if isinstance(value, Link) and value.node in self.removed:
            return self.converted[value.node].outputs.get(value.slot)
        return value


class Context:
    """What a rule may use: the graph, the conversions so far, and a way to add nodes."""

    def __init__(self, graph: Graph, converted: dict[str, Converted]):
        self.graph = graph
        self.converted = converted
        self.pending: list[NewNode] = []
        self.node: Node | None = None

    def add(self, type_: str, suffix: str, **inputs: Any) -> NewRef:
        assert self.node is not None
        key = f"{self.node.id}.{suffix}"
        self.pending.append(NewNode(key, type_, inputs, self.node.id))
        return NewRef(key)

    def ref(self, value: Any) -> Any:
        """A linked input as a source the new nodes can use (what a converted source became)."""
        if isinstance(value, Link) and value.node in self.converted:
            out = self.converted[value.node].outputs.get(value.slot)
            if out is None:
                raise Unmappable(f"its input from node {value.node} ({self.graph.nodes[value.node].type}) has no "
                                 "counterpart here")
            return out
        return value

    def source_node(self, value: Link) -> Node:
        node = self.graph.nodes.get(value.node)
        if node is None:
            raise Unmappable(f"a link comes from node {value.node}, which is not in the workflow")
        while node.type == "Reroute":  # the frontend's pass-through node: look at what feeds it
            upstream = node.inputs.get("", node.inputs.get("input"))
            if not isinstance(upstream, Link) or upstream.node not in self.graph.nodes:
                break
            node = self.graph.nodes[upstream.node]
        return node

    def converted_source(self, value: Any, what: str) -> Converted:
        if not isinstance(value, Link):
            raise Unmappable(f"its {what} input is not connected")
        node = self.source_node(value)
        if node.id not in self.converted:
            why = "is not converted" if node.type in INCUMBENT or node.type in UNMAPPED else "is not from the incumbent"
            raise Unmappable(f"its {what} comes from node {node.id} ({node.type}), which {why}")
        return self.converted[node.id]

    def adapter(self, value: Any, clip_vision: Any) -> tuple[Ref, Ref]:
        """(our adapter, CLIP vision) for an incumbent IPADAPTER input and optional clip_vision input."""
        source = self.converted_source(value, "ipadapter")
        clip = self.ref(clip_vision) if isinstance(clip_vision, Link) else source.clip_vision
        if clip is None:
            raise Unmappable("it has no CLIP vision: the ipadapter comes from IPAdapterModelLoader and clip_vision "
                             "is not connected (the original graph fails too). Connect a Load CLIP Vision node")
        if source.adapter is None:
            raise Unmappable("its ipadapter input is not an IP-Adapter")
        return source.adapter, clip

    def image(self, value: Any, what: str) -> tuple[Ref, Fit]:
        """(image source, fit) for an IMAGE input; a converted PrepImageForClipVision gives its fit."""
        if not isinstance(value, Link):
            raise Unmappable(f"its {what} input is not connected")
        node = self.source_node(value)
        done = self.converted.get(node.id)
        if done is not None and done.fit is not None:
            return done.outputs[0], done.fit
        return value, PLAIN_FIT

    def embeds(self, value: Any, what: str) -> Embeds:
        source = self.converted_source(value, what)
        slot = value.slot if isinstance(value, Link) else 0
        if slot not in source.embeds:
            raise Unmappable(f"its {what} input has no counterpart here")
        return source.embeds[slot]

    def base(self, model: Any) -> tuple[str, str]:
        """('sd15' | 'sdxl', how it was decided), following MODEL links up to a checkpoint loader."""
        seen = 0
        while isinstance(model, Link) and seen < 100:
            node = self.graph.nodes.get(model.node)
            if node is None:
                break
            if node.type in MODEL_LOADERS and isinstance(node.inputs.get(MODEL_LOADERS[node.type][0]), str):
                name = node.inputs[MODEL_LOADERS[node.type][0]]
                return guess_base(name), f"from the checkpoint name '{name}'"
            model = node.inputs.get("model")
            seen += 1
        return "sd15", "assumed SD1.5: no checkpoint loader with a readable file name upstream of the model"


Rule = Callable[[Node, Context], Converted]


def plan(graph: Graph, rules: dict[str, Rule], report: Report) -> Plan:
    converted: dict[str, Converted] = {}
    new_nodes: list[NewNode] = []
    ctx = Context(graph, converted)
    for node_id in graph.order():
        node = graph.nodes[node_id]
        if node.type in UNMAPPED:
            report.left(node, UNMAPPED[node.type])
            continue
        rule = rules.get(node.type)
        if rule is None:
            continue
        if not node.widgets_ok:
            report.left(node, node.problem)
            continue
        ctx.node, ctx.pending = node, []
        try:
            done = rule(node, ctx)
        except Unmappable as exc:
            report.left(node, f"not converted: {exc}.")
            continue
        if node.note:
            done.note = "; ".join(n for n in (node.note, done.note) if n)
        for new in ctx.pending:
            new.mode = node.mode
        new_nodes.extend(ctx.pending)
        converted[node_id] = done
    # A converted node goes only when every reader can take its replacement; a node kept beside its
    # replacement still reads the old outputs, so its sources must stay too (repeat until nothing changes).
    removed = set(converted)
    blocked: dict[str, list[tuple[str, str]]] = {}
    while True:
        for node_id in sorted(removed):
            done = converted[node_id]
            blockers = sorted({(c, graph.nodes[c].type) for c, _, slot in graph.consumers(node_id)
                               if c not in removed and slot not in done.compatible and graph.nodes[c].type != "Reroute"})
            if blockers:
                blocked[node_id] = blockers
        if not blocked.keys() & removed:
            break
        removed -= blocked.keys()
    for node_id, done in converted.items():
        node = graph.nodes[node_id]
        if node_id not in removed:
            names = ", ".join(f"{c} ({t})" for c, t in blocked[node_id])
            report.kept(node, [n.type for n in new_nodes if n.anchor == node_id],
                        f"kept beside its replacement because node(s) {names} still read its output", done.note)
        else:
            report.converted(node, [n.type for n in new_nodes if n.anchor == node_id], done.note)
    return Plan(graph, new_nodes, converted, removed, report)
