"""Score a folder of generated images against a reference, without ComfyUI.

A weight sweep (one image per IP-Adapter weight, the weight in the file name)
becomes a table of weight, CLIP-I and CLIP-T:

    python -m ip_adapter.scoring --model open_clip_pytorch_model.bin --reference ref.png \\
        --images sweep/ --text "a dog on a beach" --weights-from-filenames "w([0-9.]+)" --json out.json

Run it from the pack's folder. Output is printed (this is the one place that prints);
`--json` also writes the rows, the means and the metric definitions.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .checkpoint import ScorerFormatError, read_model_config
from .metrics import PAIRINGS, clip_i, clip_t
from .report import Row, format_table, plot_scores, to_dict
from .scorer import ACTIVATIONS, load_scorer

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def load_image(path: Path) -> torch.Tensor:
    """A file -> IMAGE [1, H, W, 3] in 0..1, oriented by EXIF as ComfyUI's LoadImage does."""
    with Image.open(path) as im:
        rgb = ImageOps.exif_transpose(im).convert("RGB")
        return torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0)[None]


def _natural(name: str) -> list[object]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, in natural order (img2 before img10)."""
    if not folder.is_dir():
        raise SystemExit(f"--images: {folder} is not a folder")
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: _natural(p.name))
    if not files:
        raise SystemExit(f"--images: no {'/'.join(IMAGE_SUFFIXES)} files in {folder}")
    return files


def weight_from_name(name: str, pattern: re.Pattern[str]) -> float | None:
    """The number `pattern` finds in `name`: its group "weight", else group 1, else the whole match."""
    match = pattern.search(name)
    if match is None:
        return None
    if "weight" in pattern.groupindex:
        text = match.group("weight")
    else:
        text = match.group(1) if pattern.groups else match.group(0)
    try:
        return float(text.rstrip("."))
    except ValueError:
        raise SystemExit(f"--weights-from-filenames matched {text!r} in {name!r}, which is not a number") from None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ip_adapter.scoring",
        description="CLIP-I / CLIP-T of generated images against a reference image (and a caption).")
    parser.add_argument("--model", required=True, type=Path,
                        help="full OpenCLIP checkpoint (.safetensors or .bin), e.g. ViT-L-14")
    parser.add_argument("--reference", required=True, type=Path, action="append",
                        help="reference image; repeat for several (CLIP-I is then the mean over them)")
    parser.add_argument("--images", required=True, type=Path, help="folder of generated images")
    parser.add_argument("--text", default="", help="caption for CLIP-T (omit to skip CLIP-T)")
    parser.add_argument("--weights-from-filenames", metavar="REGEX", type=re.compile,
                        help='regex finding the weight in each file name, e.g. "w([0-9.]+)"; rows sort by it')
    parser.add_argument("--model-config", type=Path, metavar="JSON",
                        help="open_clip config for an architecture open_clip does not bundle, or the model's "
                             "open_clip_config.json (whose quick_gelu entry 'auto' follows); <model>.json beside "
                             "the checkpoint is read without this option")
    parser.add_argument("--activation", choices=ACTIVATIONS, default="auto",
                        help="quick_gelu for OpenAI's weights (the paper's ViT-L/14), gelu for LAION's")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=tuple(_DTYPES), default="fp32")
    parser.add_argument("--json", type=Path, help="write rows, means and definitions here")
    parser.add_argument("--plot", type=Path, help="write a PNG plot of the scores here")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def score_folder(args: argparse.Namespace) -> tuple[list[Row], dict[str, object]]:
    """Load the model, score every image, return the rows (sorted by weight if known) and context."""
    files = list_images(args.images)
    scorer = load_scorer(args.model, activation=args.activation, dtype=_DTYPES[args.precision],
                         architectures=read_model_config(args.model_config) if args.model_config else None)
    scorer.model.to(args.device)
    reference = [load_image(p) for p in args.reference]
    ref_emb = torch.cat([scorer.encode_images(r) for r in reference])
    text_emb = scorer.encode_texts([args.text]) if args.text.strip() else None
    rows = []
    for path in files:
        emb = scorer.encode_images(load_image(path))
        weight = weight_from_name(path.name, args.weights_from_filenames) if args.weights_from_filenames else None
        if args.weights_from_filenames and weight is None:
            logging.getLogger(__name__).warning("no weight found in %s", path.name)
        rows.append(Row(label=path.name, clip_i=float(clip_i(emb, ref_emb, PAIRINGS[0])[0]),
                        clip_t=float(clip_t(emb, text_emb)[0]) if text_emb is not None else None, weight=weight))
    if args.weights_from_filenames:
        rows.sort(key=lambda r: (r.weight is None, r.weight if r.weight is not None else 0.0))
    context = {"model": str(args.model), "architecture": scorer.architecture.name,
               "activation": "quick_gelu" if scorer.quick_gelu else "gelu",
               "reference": [str(p) for p in args.reference], "text": args.text or None}
    return rows, context


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        rows, context = score_folder(args)
    except ScorerFormatError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(format_table(rows, title=f"{context['architecture']} ({context['activation']}): {args.images}"))
    if args.json:
        args.json.write_text(json.dumps(to_dict(rows, **context), indent=2) + "\n")
    if args.plot:
        plot_scores(rows).save(args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
