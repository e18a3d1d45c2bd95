"""Non-square references: how much of an off-centre subject each fit keeps, scored with the pack's CLIP-I.

    python benchmarks/bench_non_square.py [--scorer open_clip_ViT-H-14.safetensors]

Synthetic references: a textured subject (a patterned disk, 70% of the short side)
near one end of a 1:2 portrait or a 2:1 landscape, on a smooth gradient. For each
fit the script builds what CLIP vision would see (the pack's own `utils.tiling` and
`utils.images` code) and scores it against the subject alone on a square canvas of
the same background, with `ip_adapter.scoring` (CLIP-I = cosine of image
embeddings). Tiled is scored two ways: the mean of its tiles' unit embeddings (all
tile tokens are kept side by side, so attention sees every tile) and its best tile.
Also printed: the share of the subject's pixels inside the view, and the subject's
diameter in the encoder's 224 px input.

With --scorer, a local OpenCLIP checkpoint (e.g. LAION ViT-H-14) gives semantic
figures. Without one, a random-weight OpenCLIP ViT (no trained weights can be
downloaded here) is used: its cosine then reflects shared low-level structure, not
meaning; read those figures as a proxy and rerun with a real scorer.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

SIDE = 224


def canvas(height: int, width: int) -> torch.Tensor:
    """A smooth two-colour gradient background [H, W, 3]."""
    y = torch.linspace(0, 1, height).view(-1, 1, 1)
    x = torch.linspace(0, 1, width).view(1, -1, 1)
    return (0.25 + 0.35 * y * torch.tensor([0.2, 0.5, 0.9]) + 0.25 * x * torch.tensor([0.9, 0.6, 0.2])).expand(
        height, width, 3).clone()


def stamp(image: torch.Tensor, cy: float, cx: float, radius: float) -> torch.Tensor:
    """Paint the subject: a disk with a coloured checker and ring pattern; returns its pixel mask [H, W]."""
    height, width, _ = image.shape
    yy, xx = torch.meshgrid(torch.arange(height).float(), torch.arange(width).float(), indexing="ij")
    r = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()
    inside = r <= radius
    checker = (((yy - cy) // (radius / 4)) + ((xx - cx) // (radius / 4))) % 2
    ring = (torch.sin(r / radius * 3 * math.pi) > 0).float()
    colour = torch.stack([0.9 * checker + 0.1, 0.2 + 0.6 * ring, 0.8 - 0.6 * checker], dim=-1)
    image[inside] = colour[inside]
    return inside


def references() -> list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(name, image [1, H, W, 3], subject mask [H, W], target [1, S, S, 3]) per synthetic case."""
    cases = []
    for name, (height, width), (cy, cx) in (
        ("portrait 1:2, subject at top", (448, 224), (100, 112)),
        ("portrait 4:5, subject at top", (280, 224), (80, 112)),
        ("landscape 2:1, subject at left", (224, 448), (112, 100)),
    ):
        radius = 0.35 * min(height, width)
        image = canvas(height, width)
        mask = stamp(image, cy, cx, radius)
        target = canvas(SIDE, SIDE)
        stamp(target, SIDE / 2, SIDE / 2, 0.35 * SIDE)
        cases.append((name, image.unsqueeze(0), mask, target.unsqueeze(0)))
    return cases


def views(pack, image: torch.Tensor, mask: torch.Tensor) -> dict[str, tuple[torch.Tensor, float, float]]:
    """fit -> (square view(s) [n, s, s, 3], share of subject pixels kept, subject diameter in 224 px)."""
    tiling, images = pack.utils.tiling, pack.utils.images
    m = mask.float().view(1, *mask.shape, 1)
    total = float(mask.sum())
    short_side = min(image.shape[1:3])
    diameter = 2 * math.sqrt(total / math.pi)
    out = {}
    crop_at = "top" if image.shape[1] > image.shape[2] else "left"
    for fit, (view, kept) in {
        "center crop": (tiling.crop_square(image), tiling.crop_square(m)),
        f"crop {crop_at}": (tiling.crop_square(image, crop_at), tiling.crop_square(m, crop_at)),
        "pad": (images.pad_to_square(image), images.pad_to_square(m)),
    }.items():
        scale = SIDE / view.shape[1]
        out[fit] = (view, float(kept.sum()) / total, diameter * scale)
    tiles, _ = tiling.square_tiles(image)
    tile_masks, _ = tiling.square_tiles(m)
    best = max(float(t.sum()) for t in tile_masks) / total
    out["tiled"] = (tiles, best, diameter * SIDE / short_side)
    return out


def load_pack():
    """The pack as `ipadapter_pack` (its pure parts only; ComfyUI is not needed here)."""
    import importlib

    from support.pack import import_pack

    import_pack()
    importlib.import_module("ipadapter_pack.utils.tiling")
    importlib.import_module("ipadapter_pack.utils.images")
    return importlib.import_module("ipadapter_pack")


def scorer(path: str | None):
    from ipadapter_pack.ip_adapter.scoring import load_scorer, scorer_from_state_dict

    if path:
        return load_scorer(path), "OpenCLIP checkpoint " + Path(path).name
    from support.openclip_checkpoints import tiny_config, tiny_model

    config = tiny_config(embed_dim=256, vision_cfg__image_size=224, vision_cfg__layers=4, vision_cfg__width=256,
                         vision_cfg__patch_size=16, vision_cfg__head_width=64)
    model = tiny_model(config, seed=0)
    return scorer_from_state_dict(model.state_dict(), "random ViT", architectures={"random-vit": config}), (
        "random-weight OpenCLIP ViT (proxy: no trained CLIP available offline)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scorer", help="a local OpenCLIP checkpoint (.safetensors/.pt) for semantic CLIP-I")
    args = parser.parse_args()
    pack = load_pack()
    score_model, what = scorer(args.scorer)
    from ipadapter_pack.ip_adapter.scoring import clip_i

    print(f"CLIP-I against the subject alone (scorer: {what})")
    print(f"{'reference':32} {'fit':12} {'CLIP-I':>7} {'best tile':>9} {'subject kept':>12} {'subject px':>10}")
    for name, image, mask, target in references():
        reference = score_model.encode_images(target)
        for fit, (view, kept, diameter) in views(pack, image, mask).items():
            embeds = score_model.encode_images(view)
            if view.shape[0] == 1:
                value, best = float(clip_i(embeds, reference)[0]), ""
            else:
                mean = torch.nn.functional.normalize(embeds, dim=-1).mean(0, keepdim=True)
                value = float(clip_i(mean, reference)[0])
                best = f"{float(clip_i(embeds, reference).max()):.3f}"
            print(f"{name:32} {fit:12} {value:7.3f} {best:>9} {kept:12.0%} {diameter:10.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
