"""Presenting scores: a text table, a JSON-ready dict and a small PIL plot.

Shared by the ComfyUI node and the command line so both print the same table.
No matplotlib: the plot is drawn with PIL, which ComfyUI already depends on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from .metrics import CLIPSCORE_W

#: One line per metric, written into tables and JSON so numbers never travel without their meaning.
DEFINITIONS = {
    "clip_i": "CLIP-I = cos(E_img(generated), E_img(reference)); mean over references unless paired one to one",
    "clip_t": f"CLIP-T = CLIPScore = {CLIPSCORE_W} * max(cos(E_img(generated), E_txt(text)), 0) (Hessel et al. 2021)",
}

_COLORS = {"clip_i": (31, 119, 180), "clip_t": (214, 39, 40)}


@dataclass(frozen=True)
class Row:
    """One scored image. `weight` comes from the file name in a sweep; None elsewhere."""

    label: str
    clip_i: float
    clip_t: float | None = None
    weight: float | None = None


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def means(rows: Sequence[Row]) -> tuple[float, float]:
    """(mean CLIP-I, mean CLIP-T); NaN where no row has a value."""
    ci = [r.clip_i for r in rows]
    ct = [r.clip_t for r in rows if r.clip_t is not None]
    return (sum(ci) / len(ci) if ci else math.nan, sum(ct) / len(ct) if ct else math.nan)


def format_table(rows: Sequence[Row], title: str | None = None) -> str:
    """A fixed-width table: image, weight (if any row has one), CLIP-I, CLIP-T, then the means."""
    with_weight = any(r.weight is not None for r in rows)
    header = ["image"] + (["weight"] if with_weight else []) + ["CLIP-I", "CLIP-T"]
    body = [[r.label] + ([_fmt(r.weight, 3)] if with_weight else []) + [_fmt(r.clip_i), _fmt(r.clip_t)]
            for r in rows]
    mean_i, mean_t = means(rows)
    footer = ["mean"] + ([""] if with_weight else []) + [_fmt(mean_i), _fmt(mean_t)]
    widths = [max(len(line[c]) for line in (header, *body, footer)) for c in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths)))

    rule = "-" * len(line(header))
    out = ([title] if title else []) + [line(header), rule, *map(line, body), rule, line(footer)]
    return "\n".join(out)


def _json_number(v: float | None) -> float | None:
    """JSON has no NaN: a missing or NaN score becomes null."""
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def to_dict(rows: Sequence[Row], **context: Any) -> dict[str, Any]:
    """JSON-ready: context (model, reference, text ...), definitions, rows, means (null for NaN)."""
    mean_i, mean_t = means(rows)
    return {
        **context,
        "definitions": DEFINITIONS,
        "rows": [{"image": r.label, "weight": r.weight, "clip_i": _json_number(r.clip_i), "clip_t": _json_number(r.clip_t)}
                 for r in rows],
        "mean": {"clip_i": _json_number(mean_i), "clip_t": _json_number(mean_t)},
    }


def plot_scores(rows: Sequence[Row], size: tuple[int, int] = (480, 270)) -> Image.Image:
    """CLIP-I and CLIP-T against weight (or image index) as a small RGB line chart."""
    width, height = size
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    left, right, top, bottom = 48, width - 12, 26, height - 30
    use_weight = bool(rows) and all(r.weight is not None for r in rows)
    xs = [r.weight if use_weight else float(i) for i, r in enumerate(rows)]
    series = {"clip_i": [r.clip_i for r in rows], "clip_t": [r.clip_t for r in rows]}
    values = [v for vs in series.values() for v in vs if v is not None and not math.isnan(v)]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    pad = max((hi - lo) * 0.1, 0.02)
    lo, hi = lo - pad, hi + pad
    x_lo, x_hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    x_span = (x_hi - x_lo) or 1.0

    def at(x: float, y: float) -> tuple[float, float]:
        px = left + (x - x_lo) / x_span * (right - left) if len(xs) > 1 else (left + right) / 2
        return px, bottom - (y - lo) / (hi - lo) * (bottom - top)

    draw.rectangle([left, top, right, bottom], outline=(160, 160, 160))
    for k in range(5):  # y grid and labels
        y = lo + (hi - lo) * k / 4
        _, py = at(x_lo, y)
        draw.line([left, py, right, py], fill=(230, 230, 230))
        draw.text((4, py - 6), f"{y:.3f}", fill=(60, 60, 60), font=font)
    for x in sorted(set(xs))[:: max(1, len(set(xs)) // 8)]:  # at most ~8 x labels
        px, _ = at(x, lo)
        draw.text((px - 10, bottom + 6), f"{x:g}", fill=(60, 60, 60), font=font)
    draw.text(((left + right) // 2 - 20, height - 13), "weight" if use_weight else "image", fill=(60, 60, 60),
              font=font)
    order = sorted(range(len(rows)), key=lambda i: xs[i])
    for legend_x, (name, vs) in zip((left, left + 90), series.items()):
        points = [at(xs[i], vs[i]) for i in order if vs[i] is not None and not math.isnan(vs[i])]
        if len(points) > 1:
            draw.line(points, fill=_COLORS[name], width=2)
        for px, py in points:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=_COLORS[name])
        draw.text((legend_x, 6), "CLIP-I" if name == "clip_i" else "CLIP-T", fill=_COLORS[name], font=font)
    return image
