"""Random-weight SD1.5 ControlNet files in the published layout (lllyasviel ControlNet-v1-1).

`control_v11p_sd15_*.pth/.safetensors` hold one state dict whose keys all start with
`control_model.`: `time_embed.*`, `input_hint_block.{0,2,...,14}.*` (the hint encoder, 3 ->
16 -> 32 -> 96 -> 256 -> model_channels, downsampling 8x), `input_blocks.*` and
`middle_block.*` (a copy of the UNet encoder), `zero_convs.{0..11}.0.*` and
`middle_block_out.0.*` (the 1x1 "zero" convolutions whose outputs are added to the UNet).
ComfyUI's `ControlNetLoader` recognises the layout by `control_model.zero_convs.0.0.weight`
and reads the architecture from the tensor shapes.

The network is built by ComfyUI's own `comfy.cldm.cldm.ControlNet` (the same module names the
published files use) at a small width and initialised like the test UNets, zero convolutions
included, so the ControlNet visibly acts.

Width: ComfyUI has no SD1.5 config at a reduced width, so it falls back to a generic one with
64 channels per attention head; the ControlNet's (and so the UNet's) `model_channels` must be a
multiple of 64. Pair it with `unets.comfy_sd15_model(model_channels=64)`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .unets import init_unet_weights, sd15_unet_config

PREFIX = "control_model."
#: Keys every published SD1.5 ControlNet v1.1 file has (a sample checked by `sd15_controlnet_state_dict`).
LANDMARK_KEYS = (
    "control_model.time_embed.0.weight",
    "control_model.input_hint_block.0.weight",
    "control_model.input_hint_block.14.weight",
    "control_model.input_blocks.0.0.weight",
    "control_model.input_blocks.1.1.proj_in.weight",
    "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
    "control_model.zero_convs.0.0.weight",
    "control_model.zero_convs.11.0.weight",
    "control_model.middle_block.1.transformer_blocks.0.attn2.to_v.weight",
    "control_model.middle_block_out.0.weight",
)


def sd15_controlnet_state_dict(model_channels: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    """`control_model.*` tensors (float32) of an SD1.5 ControlNet for a UNet of `model_channels`."""
    import comfy.cldm.cldm
    import comfy.ops

    if model_channels % 64:
        raise ValueError(f"model_channels must be a multiple of 64 for ComfyUI to load it, got {model_channels}")
    config = sd15_unet_config(model_channels)
    config.pop("out_channels")
    network = comfy.cldm.cldm.ControlNet(hint_channels=3, operations=comfy.ops.disable_weight_init,
                                         device="cpu", **config)
    init_unet_weights(network, seed)
    sd = {PREFIX + key: value.detach().clone().contiguous() for key, value in network.state_dict().items()}
    missing = [key for key in LANDMARK_KEYS if key not in sd]
    if missing:
        raise RuntimeError(f"ControlNet layout changed: missing {missing}")
    return sd


def save_sd15_controlnet(path: str | Path, model_channels: int = 64, seed: int = 0) -> Path:
    """Write `sd15_controlnet_state_dict` as .safetensors and return the path."""
    from safetensors.torch import save_file

    path = Path(path)
    save_file(sd15_controlnet_state_dict(model_channels, seed), str(path))
    return path
