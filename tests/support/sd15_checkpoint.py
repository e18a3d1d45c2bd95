"""The smallest SD1.5 checkpoint ComfyUI's `CheckpointLoaderSimple` accepts, with random weights.

Why: an end-to-end test on a real server needs a `Load Checkpoint -> KSampler -> VAE Decode`
graph, so the file must pass ComfyUI 0.8.0's own detection and loading. What ComfyUI fixes and
what it reads from the tensors (checked in `comfy/supported_models.py`, `comfy/sd.py`,
`comfy/sd1_clip.py`):

* UNet: the architecture is read from key names and shapes (`comfy.model_detection`), but the
  SD15 entry only matches `model_channels == 320` and `context_dim == 768`. The width *per level*
  (`channel_mult`) is free: `channel_mult = [1, 1, 1, 1]` keeps every block, transformer and
  attention slot of SD1.5 (16 attn2 slots, skip connections, three up/downsamplers) at width 320
  everywhere: ~90M parameters instead of 860M.
* Text encoder: a fixed config (`sd1_clip_config.json`: CLIP-L, 12 layers, 768 wide, 49408
  tokens), so it is written at full size (123M parameters).
* VAE: a fixed config for this key layout (ch 128, ch_mult [1, 2, 4, 4]), full size (84M).

Keys are the original LDM layout of `v1-5-pruned-emaonly` (`model.diffusion_model.*`,
`cond_stage_model.transformer.text_model.*`, `first_stage_model.*`). Stored in fp16: ~590 MB,
written one tensor at a time. Values depend only on (seed, key). Residual branches are scaled
down so random activations stay finite and images are not all black or white.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from .checkpoints import key_seed
from .clip_vision_files import _write_streaming_safetensors

# (key, shape, init kind)
_Entry = tuple[str, tuple[int, ...], str]

UNET_WIDTH = 320  # what comfy.supported_models.SD15 requires
UNET_LEVELS = 4
TIME_EMBED = 4 * UNET_WIDTH
CONTEXT = 768
CLIP_LAYERS, CLIP_WIDTH, CLIP_FF, CLIP_VOCAB, CLIP_POSITIONS = 12, 768, 3072, 49408, 77
VAE_CH, VAE_MULT = 128, (1, 2, 4, 4)


def _norm(prefix: str, c: int) -> list[_Entry]:
    return [(f"{prefix}.weight", (c,), "nw"), (f"{prefix}.bias", (c,), "nb")]


def _lin(prefix: str, shape: tuple[int, ...], kind: str = "w", bias: bool = True) -> list[_Entry]:
    entries = [(f"{prefix}.weight", shape, kind)]
    return entries + ([(f"{prefix}.bias", (shape[0],), "b")] if bias else [])


# ---- UNet (LDM layout) ----------------------------------------------------------------

def _unet_res(p: str, cin: int, cout: int) -> list[_Entry]:
    entries = [*_norm(f"{p}.in_layers.0", cin), *_lin(f"{p}.in_layers.2", (cout, cin, 3, 3)),
               *_lin(f"{p}.emb_layers.1", (cout, TIME_EMBED)), *_norm(f"{p}.out_layers.0", cout),
               *_lin(f"{p}.out_layers.3", (cout, cout, 3, 3), "wres")]
    if cin != cout:
        entries += _lin(f"{p}.skip_connection", (cout, cin, 1, 1))
    return entries


def _unet_transformer(p: str, c: int) -> list[_Entry]:
    b = f"{p}.transformer_blocks.0"
    entries = [*_norm(f"{p}.norm", c), *_lin(f"{p}.proj_in", (c, c, 1, 1))]
    for attn, kv_in in (("attn1", c), ("attn2", CONTEXT)):
        entries += [*_lin(f"{b}.{attn}.to_q", (c, c), bias=False),
                    *_lin(f"{b}.{attn}.to_k", (c, kv_in), bias=False),
                    *_lin(f"{b}.{attn}.to_v", (c, kv_in), bias=False),
                    *_lin(f"{b}.{attn}.to_out.0", (c, c), "wres")]
    entries += [*_lin(f"{b}.ff.net.0.proj", (8 * c, c)), *_lin(f"{b}.ff.net.2", (c, 4 * c), "wres")]
    for n in (1, 2, 3):
        entries += _norm(f"{b}.norm{n}", c)
    return entries + _lin(f"{p}.proj_out", (c, c, 1, 1), "wres")


def unet_entries(prefix: str = "model.diffusion_model.") -> list[_Entry]:
    """SD1.5's UNet topology (2 res blocks per level, attention on levels 0-2) at width 320."""
    c = UNET_WIDTH
    e = [*_lin("time_embed.0", (TIME_EMBED, c)), *_lin("time_embed.2", (TIME_EMBED, TIME_EMBED)),
         *_lin("input_blocks.0.0", (c, 4, 3, 3))]
    index = 1
    for level in range(UNET_LEVELS):
        for _ in range(2):
            e += _unet_res(f"input_blocks.{index}.0", c, c)
            if level < 3:
                e += _unet_transformer(f"input_blocks.{index}.1", c)
            index += 1
        if level < 3:
            e += _lin(f"input_blocks.{index}.0.op", (c, c, 3, 3))
            index += 1
    e += [*_unet_res("middle_block.0", c, c), *_unet_transformer("middle_block.1", c),
          *_unet_res("middle_block.2", c, c)]
    for index in range(12):
        level = 3 - index // 3
        e += _unet_res(f"output_blocks.{index}.0", 2 * c, c)  # every skip is 320 wide here
        sub = 1
        if level < 3:
            e += _unet_transformer(f"output_blocks.{index}.1", c)
            sub = 2
        if index % 3 == 2 and level > 0:
            e += _lin(f"output_blocks.{index}.{sub}.conv", (c, c, 3, 3))
    e += [*_norm("out.0", c), *_lin("out.2", (4, c, 3, 3), "wres")]
    return [(prefix + k, s, kind) for k, s, kind in e]


# ---- CLIP-L text encoder (transformers names, as in the SD1.5 checkpoint) ----------------

def clip_l_entries(prefix: str = "cond_stage_model.transformer.text_model.") -> list[_Entry]:
    w = CLIP_WIDTH
    e = [("embeddings.token_embedding.weight", (CLIP_VOCAB, w), "emb"),
         ("embeddings.position_embedding.weight", (CLIP_POSITIONS, w), "emb")]
    for i in range(CLIP_LAYERS):
        p = f"encoder.layers.{i}"
        e += [*_lin(f"{p}.self_attn.q_proj", (w, w)), *_lin(f"{p}.self_attn.k_proj", (w, w)),
              *_lin(f"{p}.self_attn.v_proj", (w, w)), *_lin(f"{p}.self_attn.out_proj", (w, w), "wres"),
              *_norm(f"{p}.layer_norm1", w), *_lin(f"{p}.mlp.fc1", (CLIP_FF, w)),
              *_lin(f"{p}.mlp.fc2", (w, CLIP_FF), "wres"), *_norm(f"{p}.layer_norm2", w)]
    e += _norm("final_layer_norm", w)
    return [(prefix + k, s, kind) for k, s, kind in e]


# ---- VAE (LDM layout) ------------------------------------------------------------------

def _vae_res(p: str, cin: int, cout: int) -> list[_Entry]:
    e = [*_norm(f"{p}.norm1", cin), *_lin(f"{p}.conv1", (cout, cin, 3, 3)),
         *_norm(f"{p}.norm2", cout), *_lin(f"{p}.conv2", (cout, cout, 3, 3), "wres")]
    return e + (_lin(f"{p}.nin_shortcut", (cout, cin, 1, 1)) if cin != cout else [])


def _vae_mid(p: str, c: int) -> list[_Entry]:
    attn = [*_norm(f"{p}.attn_1.norm", c)]
    for name in ("q", "k", "v"):
        attn += _lin(f"{p}.attn_1.{name}", (c, c, 1, 1))
    attn += _lin(f"{p}.attn_1.proj_out", (c, c, 1, 1), "wres")
    return [*_vae_res(f"{p}.block_1", c, c), *attn, *_vae_res(f"{p}.block_2", c, c)]


def vae_entries(prefix: str = "first_stage_model.") -> list[_Entry]:
    chans = [VAE_CH * m for m in VAE_MULT]
    e = _lin("encoder.conv_in", (VAE_CH, 3, 3, 3))
    cin = VAE_CH
    for i, cout in enumerate(chans):
        for j in range(2):
            e += _vae_res(f"encoder.down.{i}.block.{j}", cin, cout)
            cin = cout
        if i < len(chans) - 1:
            e += _lin(f"encoder.down.{i}.downsample.conv", (cout, cout, 3, 3))
    top = chans[-1]
    e += [*_vae_mid("encoder.mid", top), *_norm("encoder.norm_out", top),
          *_lin("encoder.conv_out", (8, top, 3, 3)), *_lin("quant_conv", (8, 8, 1, 1)),
          *_lin("post_quant_conv", (4, 4, 1, 1)), *_lin("decoder.conv_in", (top, 4, 3, 3)),
          *_vae_mid("decoder.mid", top)]
    cin = top
    for i in reversed(range(len(chans))):
        for j in range(3):
            e += _vae_res(f"decoder.up.{i}.block.{j}", cin, chans[i])
            cin = chans[i]
        if i > 0:
            e += _lin(f"decoder.up.{i}.upsample.conv", (cin, cin, 3, 3))
    e += [*_norm("decoder.norm_out", VAE_CH), *_lin("decoder.conv_out", (3, VAE_CH, 3, 3))]
    return [(prefix + k, s, kind) for k, s, kind in e]


# ---- values and files --------------------------------------------------------------------

def _init(shape: tuple[int, ...], kind: str, seed: int) -> torch.Tensor:
    """fp32 values: fan-in scaled weights, residual branches x0.2, norms near identity."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    if kind in ("w", "wres"):
        fan_in = 1
        for d in shape[1:]:
            fan_in *= d
        return x.mul_(fan_in**-0.5 * (0.2 if kind == "wres" else 1.0))
    if kind == "nw":
        return x.mul_(0.05).add_(1.0)
    return x.mul_({"b": 0.02, "nb": 0.05, "emb": 0.02}[kind])


def checkpoint_entries() -> list[_Entry]:
    """Every key of the tiny SD1.5 checkpoint, UNet, text encoder and VAE."""
    return unet_entries() + clip_l_entries() + vae_entries()


def param_count(entries: list[_Entry] | None = None) -> int:
    total = 0
    for _, shape, _ in entries or checkpoint_entries():
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


def _tensors(entries: list[_Entry], seed: int, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    for key, shape, kind in entries:
        yield key, _init(shape, kind, key_seed(seed, key)).to(dtype)


def write_sd15_checkpoint(path: str | Path, seed: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    """Write the checkpoint to `path` (a `.safetensors` name), one tensor at a time."""
    path = Path(path)
    entries = checkpoint_entries()
    _write_streaming_safetensors(path, [(k, s) for k, s, _ in entries], dtype, _tensors(entries, seed, dtype))
    return path
