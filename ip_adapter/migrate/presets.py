"""IPAdapterUnifiedLoader presets -> the files they load, by their published names.

The incumbent finds files by pattern at run time and picks SD1.5 or SDXL from the model
(utils.py `get_ipadapter_file`, `get_clipvision_file`). A converted graph names the files:
these are the names h94/IP-Adapter publishes them under (the incumbent's README asks for
the same names), and the CLIP vision names its README gives.
"""

from __future__ import annotations

VIT_H = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
VIT_BIGG = "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors"

#: preset -> {base: (adapter file, CLIP vision file)}; a base missing means the incumbent refuses it too.
PRESETS: dict[str, dict[str, tuple[str, str]]] = {
    "LIGHT - SD1.5 only (low strength)": {"sd15": ("ip-adapter_sd15_light_v11.bin", VIT_H)},
    "STANDARD (medium strength)": {"sd15": ("ip-adapter_sd15.safetensors", VIT_H),
                                   "sdxl": ("ip-adapter_sdxl_vit-h.safetensors", VIT_H)},
    "VIT-G (medium strength)": {"sd15": ("ip-adapter_sd15_vit-G.safetensors", VIT_BIGG),
                                "sdxl": ("ip-adapter_sdxl.safetensors", VIT_BIGG)},
    "PLUS (high strength)": {"sd15": ("ip-adapter-plus_sd15.safetensors", VIT_H),
                             "sdxl": ("ip-adapter-plus_sdxl_vit-h.safetensors", VIT_H)},
    "PLUS FACE (portraits)": {"sd15": ("ip-adapter-plus-face_sd15.safetensors", VIT_H),
                              "sdxl": ("ip-adapter-plus-face_sdxl_vit-h.safetensors", VIT_H)},
    "FULL FACE - SD1.5 only (portraits stronger)": {"sd15": ("ip-adapter-full-face_sd15.safetensors", VIT_H)},
}

#: ComfyUI's loaders that name the checkpoint (input name, its position in widgets_values), for SD1.5 vs SDXL.
MODEL_LOADERS = {"CheckpointLoaderSimple": ("ckpt_name", 0), "CheckpointLoader": ("ckpt_name", 1),
                 "UNETLoader": ("unet_name", 0), "ImageOnlyCheckpointLoader": ("ckpt_name", 0),
                 "unCLIPCheckpointLoader": ("ckpt_name", 0)}


def guess_base(file_name: str) -> str:
    """'sdxl' when a checkpoint's file name says XL (sd_xl_base, juggernautXL, ...), else 'sd15'."""
    squashed = file_name.lower().replace("_", "").replace("-", "").replace(" ", "")
    return "sdxl" if "xl" in squashed else "sd15"
