"""Optional CLIP-I / CLIP-T of every output image, written into the manifest (`--score-model`).

Reuses the pack's scorer (`ip_adapter.scoring`: a full OpenCLIP model from a local file, the
definitions in its README section). This is the only module of the tool that needs torch and
open_clip, and it is imported only when scoring is asked for.

Per item: CLIP-I against `--score-reference` images if given, else against the item's own
reference image(s) (the files substituted into `LoadImage` inputs); CLIP-T against
`--score-text` if given, else the item's substituted prompt text, else skipped.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from .plan import Item, Target


def _scoring_package() -> ModuleType:
    """`ip_adapter.scoring`, as a top-level package (run from the pack's folder, or installed)
    or as a sibling inside the pack's package."""
    try:
        return importlib.import_module("ip_adapter.scoring")
    except ImportError:
        if __package__ and "." in __package__:
            return importlib.import_module(__package__.rsplit(".", 1)[0] + ".ip_adapter.scoring")
        raise


def make_scorer(model: Path, references: Sequence[Path] = (), text: str | None = None,
                prompt_target: Target | None = None, activation: str = "auto", device: str = "cpu"):
    """A `runner.Scorer`: (item, output paths) -> scores dict for the manifest."""
    scoring = _scoring_package()
    cli = importlib.import_module(scoring.__name__ + ".cli")
    import torch

    scorer = scoring.load_scorer(model, activation=activation)
    scorer.model.to(device)
    embeddings: dict[Path, Any] = {}

    def image_embedding(path: Path):
        if path not in embeddings:
            embeddings[path] = scorer.encode_images(cli.load_image(Path(path)))
        return embeddings[path]

    fixed_refs = [Path(r) for r in references]

    def score(item: Item, outputs: list[Path]) -> dict[str, Any]:
        refs = fixed_refs or [v for t, v in item.values if t.is_image]
        caption = text
        if caption is None and prompt_target is not None:
            caption = next((v for t, v in item.values if t == prompt_target), None)
        if caption is None:
            caption = next((v for t, v in item.values if t.class_type == "CLIPTextEncode" and t.input == "text"), None)
        ref_emb = torch.cat([image_embedding(r) for r in refs]) if refs else None
        text_emb = scorer.encode_texts([caption]) if caption and caption.strip() else None
        per_image = {}
        for path in outputs:
            emb = scorer.encode_images(cli.load_image(path))
            per_image[path.name] = {
                "clip_i": float(scoring.clip_i(emb, ref_emb)[0]) if ref_emb is not None else None,
                "clip_t": float(scoring.clip_t(emb, text_emb)[0]) if text_emb is not None else None,
            }

        def mean(key: str) -> float | None:
            values = [s[key] for s in per_image.values() if s[key] is not None]
            return sum(values) / len(values) if values else None

        return {"model": str(model), "architecture": scorer.architecture.name,
                "activation": "quick_gelu" if scorer.quick_gelu else "gelu",
                "reference": [str(r) for r in refs], "text": caption, "images": per_image,
                "clip_i": mean("clip_i"), "clip_t": mean("clip_t")}

    return score


def format_scores(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"
