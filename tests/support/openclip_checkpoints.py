"""Full OpenCLIP checkpoints (both towers) for the CLIP scoring tests.

Two kinds of builders:

* tiny random-weight models made by open_clip itself (`open_clip.model.CLIP` from a
  small config), written as `.safetensors` or as a `torch.save` pickle, plain or in a
  training checkpoint's `{"state_dict": {"module.<key>": ...}}` wrapper;
* shapes only, written down from the published model dimensions with no help from
  open_clip or the pack, for ViT-L/14, ViT-H/14 and ViT-bigG/14 (real sizes would be
  GBs): tests turn them into meta tensors.

Never imports the pack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

#: A tiny ViT CLIP: 32 px images in 8 px patches, 2+2 layers, 64 wide, 32-wide embeddings.
#: The vocabulary stays CLIP's 49408 so the bundled BPE tokenizer fits.
TINY_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

# Published dimensions: (embed, image width, image layers, image MLP, patch, image px,
# text width, text layers, text MLP, context, vocabulary). OpenCLIP model cards / the
# OpenAI CLIP paper's Table 20 (ViT-L/14) and LAION's ViT-H/14, ViT-bigG/14.
NAMED_DIMS: dict[str, tuple[int, ...]] = {
    "ViT-L-14": (768, 1024, 24, 4096, 14, 224, 768, 12, 3072, 77, 49408),
    "ViT-H-14": (1024, 1280, 32, 5120, 14, 224, 1024, 24, 4096, 77, 49408),
    "ViT-bigG-14": (1280, 1664, 48, 8192, 14, 224, 1280, 32, 5120, 77, 49408),
}


def tiny_config(**overrides: Any) -> dict[str, Any]:
    """`TINY_CONFIG` with top-level, `vision_cfg.*` or `text_cfg.*` entries replaced (dotted names)."""
    config = {"embed_dim": TINY_CONFIG["embed_dim"], "vision_cfg": dict(TINY_CONFIG["vision_cfg"]),
              "text_cfg": dict(TINY_CONFIG["text_cfg"])}
    for key, value in overrides.items():
        if "__" in key:
            tower, name = key.split("__", 1)
            config[tower][name] = value
        else:
            config[key] = value
    return config


def tiny_model(config: dict[str, Any] | None = None, seed: int = 0, quick_gelu: bool = False) -> torch.nn.Module:
    """open_clip's CLIP for `config` with seeded random weights (LayerNorms perturbed too), eval mode."""
    from open_clip.model import CLIP

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(**(config or TINY_CONFIG), quick_gelu=quick_gelu)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight",
                                  "ln_final.weight")):
                    param.add_(0.1 * torch.randn_like(param))
                elif name.endswith("bias"):
                    param.add_(0.02 * torch.randn_like(param))
    return model.eval()


def write_checkpoint(state_dict: dict[str, torch.Tensor], path: str | Path, wrapped: bool = False) -> Path:
    """Write `.safetensors` (flat) or a pickle (`.bin/.pt`, optionally wrapped as a training checkpoint)."""
    path = Path(path)
    sd = {k: v.detach().contiguous() for k, v in state_dict.items()}
    if path.suffix == ".safetensors":
        if wrapped:
            raise ValueError("training-checkpoint wrappers are pickles; use a .pt/.bin path")
        save_file(sd, str(path))
    else:
        data: Any = {"epoch": 3, "name": "test", "state_dict": {"module." + k: v for k, v in sd.items()}} \
            if wrapped else sd
        torch.save(data, str(path))
    return path


def write_tiny(path: str | Path, config: dict[str, Any] | None = None, seed: int = 0,
               quick_gelu: bool = False, wrapped: bool = False) -> tuple[Path, torch.nn.Module]:
    """A tiny random model and the file holding its weights."""
    model = tiny_model(config, seed, quick_gelu)
    return write_checkpoint(model.state_dict(), path, wrapped), model


def _block(prefix: str, width: int, mlp: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}ln_1.weight": (width,), f"{prefix}ln_1.bias": (width,),
        f"{prefix}attn.in_proj_weight": (3 * width, width), f"{prefix}attn.in_proj_bias": (3 * width,),
        f"{prefix}attn.out_proj.weight": (width, width), f"{prefix}attn.out_proj.bias": (width,),
        f"{prefix}ln_2.weight": (width,), f"{prefix}ln_2.bias": (width,),
        f"{prefix}mlp.c_fc.weight": (mlp, width), f"{prefix}mlp.c_fc.bias": (mlp,),
        f"{prefix}mlp.c_proj.weight": (width, mlp), f"{prefix}mlp.c_proj.bias": (width,),
    }


def openclip_shapes(dims: tuple[int, ...], text: bool = True) -> dict[str, tuple[int, ...]]:
    """Key -> shape of an OpenCLIP ViT checkpoint with `dims` (see `NAMED_DIMS`), optionally image tower only."""
    embed, vw, vl, vmlp, patch, px, tw, tl, tmlp, ctx, vocab = dims
    shapes: dict[str, tuple[int, ...]] = {
        "visual.class_embedding": (vw,),
        "visual.positional_embedding": ((px // patch) ** 2 + 1, vw),
        "visual.proj": (vw, embed),
        "visual.conv1.weight": (vw, 3, patch, patch),
        "visual.ln_pre.weight": (vw,), "visual.ln_pre.bias": (vw,),
        "visual.ln_post.weight": (vw,), "visual.ln_post.bias": (vw,),
    }
    for i in range(vl):
        shapes |= _block(f"visual.transformer.resblocks.{i}.", vw, vmlp)
    if text:
        shapes |= {"positional_embedding": (ctx, tw), "text_projection": (tw, embed), "logit_scale": (),
                   "token_embedding.weight": (vocab, tw), "ln_final.weight": (tw,), "ln_final.bias": (tw,)}
        for i in range(tl):
            shapes |= _block(f"transformer.resblocks.{i}.", tw, tmlp)
    return shapes


def meta_state_dict(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Meta tensors with `shapes`: a state dict of any size that allocates nothing."""
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}
