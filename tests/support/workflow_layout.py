"""Workflow layout as the frontend renders it: node boxes, overlaps, sizes to save, thumbnails.

Why: a saved node size smaller than what the frontend needs for the node's widgets is
silently enlarged on load, and the enlarged node then covers its neighbours (the
`layer_weights` text box floated over other nodes). Only the real frontend knows the
rendered sizes, so they are measured there (``rendered_boxes``) and checked for
overlaps (``overlaps``); ``fit_layout`` writes sizes at least the rendered ones and
moves nodes down until no two boxes (title bar included) overlap.

Maintenance command (starts a ComfyUI server with only this pack and headless Chromium):

    python tests/support/workflow_layout.py               # refit every workflows/*.json, write <name>.jpg
    python tests/support/workflow_layout.py --check       # only report overlaps
    python tests/support/workflow_layout.py --thumbnails  # only redraw the thumbnails (no server)
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `support` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import workflow_files as wf  # noqa: E402

#: LiteGraph draws the title bar above ``pos``; boxes below include it.
TITLE_HEIGHT = 30
#: Space kept between nodes when refitting.
GAP = 20

#: Every node's box as drawn: [x, y, w, h] with the title bar, plus the saved size and the minimum.
_BOXES = """() => { app.canvas.draw(true, true); return app.rootGraph.nodes.map(n => {
  const r = n.boundingRect ?? [n.pos[0], n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT, n.size[0],
                                n.size[1] + LiteGraph.NODE_TITLE_HEIGHT];
  const min = n.computeSize();
  return {id: n.id, type: n.type, box: [r[0], r[1], r[2], r[3]], pos: [n.pos[0], n.pos[1]],
          size: [n.size[0], n.size[1]], min: [min[0], min[1]]};
}); }"""


def rendered_boxes(frontend: Any) -> list[dict[str, Any]]:
    """Boxes of the loaded graph's nodes as the frontend drew them (after its own resizing)."""
    return frontend.page.evaluate(_BOXES)


def overlaps(boxes: Sequence[Mapping[str, Any]]) -> list[str]:
    """'node A (type) overlaps node B (type)' for every pair of intersecting boxes."""
    out = []
    for i, a in enumerate(boxes):
        ax, ay, aw, ah = a["box"]
        for b in boxes[i + 1:]:
            bx, by, bw, bh = b["box"]
            if ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah:
                out.append(f"node {a['id']} ({a['type']}) overlaps node {b['id']} ({b['type']})")
    return out


def undersized(workflow: Mapping[str, Any], boxes: Sequence[Mapping[str, Any]]) -> list[str]:
    """Nodes whose saved size is smaller than the frontend's minimum for their widgets."""
    saved = {n["id"]: n["size"] for n in workflow["nodes"]}
    return [f"node {b['id']} ({b['type']}): saved size {saved[b['id']]} < needed {[round(v) for v in b['min']]}"
            for b in boxes if saved[b["id"]][0] + 1 < b["min"][0] or saved[b["id"]][1] + 1 < b["min"][1]]


def fit_layout(workflow: dict[str, Any], boxes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Sizes at least the rendered ones; nodes pushed right/down until nothing overlaps (in place)."""
    rendered = {b["id"]: b for b in boxes}
    nodes = sorted(workflow["nodes"], key=lambda n: (n["pos"][0], n["pos"][1]))
    placed: list[tuple[float, float, float, float]] = []
    for node in nodes:
        b = rendered[node["id"]]
        w = max(node["size"][0], b["size"][0], b["min"][0])
        h = max(node["size"][1], b["size"][1], b["min"][1])
        node["size"] = [round(w), round(h)]
        x, y = node["pos"]
        moved = True
        while moved:
            moved = False
            for px, py, pw, ph in placed:
                if x < px + pw + GAP and px < x + w + GAP and y - TITLE_HEIGHT < py + ph + GAP and py < y + h + GAP:
                    y = py + ph + GAP + TITLE_HEIGHT
                    moved = True
        node["pos"] = [round(x), round(y)]
        placed.append((x, y - TITLE_HEIGHT, w, h + TITLE_HEIGHT))
    _fit_groups(workflow)
    return workflow


def _fit_groups(workflow: dict[str, Any], pad: int = 30) -> None:
    """A group spanning the whole graph gets the bounding box of all nodes (title above)."""
    if not workflow.get("groups"):
        return
    x0 = min(n["pos"][0] for n in workflow["nodes"]) - pad
    y0 = min(n["pos"][1] for n in workflow["nodes"]) - TITLE_HEIGHT - pad - 60
    x1 = max(n["pos"][0] + n["size"][0] for n in workflow["nodes"]) + pad
    y1 = max(n["pos"][1] + n["size"][1] for n in workflow["nodes"]) + pad
    for group in workflow["groups"]:
        group["bounding"] = [round(x0), round(y0), round(x1 - x0), round(y1 - y0)]


def thumbnail(workflow: Mapping[str, Any], path: Path, size: tuple[int, int] = (480, 360)) -> Path:
    """A small JPEG of the graph beside the workflow: its group title, node boxes and links.

    Drawn from the saved (refitted) layout with PIL, not a screenshot, so it has no UI chrome
    and is the same on every machine. The pack's own nodes are drawn in the accent colour.
    """
    from PIL import Image, ImageDraw, ImageFont

    width, height = size
    image = Image.new("RGB", size, (32, 34, 38))
    draw = ImageDraw.Draw(image)
    title = next((g["title"] for g in workflow.get("groups", []) if g.get("title")), path.stem)
    font = ImageFont.load_default(size=22)
    lines, line = [], ""
    for word in title.split():
        if draw.textlength(f"{line} {word}".strip(), font=font) > width - 24:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    for i, text in enumerate(lines[:3]):
        draw.text((12, 10 + 26 * i), text, fill=(235, 235, 235), font=font)
    top = 20 + 26 * min(len(lines), 3)
    nodes = {n["id"]: n for n in workflow["nodes"]}
    x0 = min(n["pos"][0] for n in nodes.values())
    y0 = min(n["pos"][1] - TITLE_HEIGHT for n in nodes.values())
    x1 = max(n["pos"][0] + n["size"][0] for n in nodes.values())
    y1 = max(n["pos"][1] + n["size"][1] for n in nodes.values())
    scale = min((width - 24) / (x1 - x0), (height - top - 12) / (y1 - y0))

    def at(x: float, y: float) -> tuple[float, float]:
        return 12 + (x - x0) * scale, top + (y - y0) * scale

    for _lid, src, _ss, dst, _ds, _type in workflow["links"]:
        a, b = nodes[src], nodes[dst]
        draw.line([at(a["pos"][0] + a["size"][0], a["pos"][1] + 10), at(b["pos"][0], b["pos"][1] + 10)],
                  fill=(120, 140, 170), width=1)
    small = ImageFont.load_default(size=max(8, int(14 * scale * 2.2)))
    for n in nodes.values():
        ours = "IPAdapter" in n["type"] or "ImagePrompt" in n["type"]
        box = [*at(n["pos"][0], n["pos"][1] - TITLE_HEIGHT), *at(n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])]
        draw.rectangle(box, fill=(62, 84, 120) if ours else (58, 60, 66), outline=(150, 160, 175))
        draw.text((box[0] + 3, box[1] + 2), n.get("title") or n["type"], fill=(225, 225, 225), font=small)
    out = path.with_suffix(".jpg")
    image.save(out, "JPEG", quality=75, optimize=True)
    return out


def main(argv: Sequence[str]) -> int:
    import tempfile

    from support import comfy_server
    from support import frontend as fe
    from support.comfy_harness import REPO_ROOT
    from support.frontend_models import fill_base_dir

    check_only = "--check" in argv
    paths = wf.ui_workflows()
    if "--thumbnails" in argv:
        for path in paths:
            print(thumbnail(wf.load(path), path))
        return 0
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="layout-") as tmp:
        base = Path(tmp)
        fill_base_dir(base, paths)
        packs = {comfy_server.PACK_DIR_NAME: REPO_ROOT}
        with comfy_server.comfy_server(base, packs=packs) as server, fe.open_frontend(server.url) as page:
            for path in paths:
                workflow = wf.load(path)
                page.load_workflow(workflow, path.name)
                boxes = rendered_boxes(page)
                found = overlaps(boxes) + undersized(workflow, boxes)
                problems += [f"{path.name}: {p}" for p in found]
                if check_only:
                    continue
                fit_layout(workflow, boxes)
                path.write_text(json.dumps(workflow, indent=2) + "\n", encoding="utf-8")
                page.load_workflow(workflow, path.name)
                left = overlaps(rendered_boxes(page))
                print(f"{path.name}: {len(found)} problems before, {len(left)} after refit", flush=True)
                thumbnail(workflow, path)
    print("\n".join(problems) or "no overlaps, no undersized nodes")
    return 1 if (problems and check_only) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
