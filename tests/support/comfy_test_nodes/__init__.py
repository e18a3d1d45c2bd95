"""Test-only ComfyUI nodes, loaded beside the pack by `support.comfy_server` (never shipped).

Why: ComfyUI 0.8.0's `CLIPVisionLoader` picks its config from the layer count alone
(`comfy.clip_vision.load_clipvision_from_sd`), so the smallest tower it accepts is a full
ViT-L/14 (304M parameters). `TinyCLIPVisionLoader` builds the same class
(`comfy.clip_vision.ClipVisionModel`) from a small JSON config saved beside the weights
(`<name>.json`, as `support.clip_vision_files.save_clip_vision_config` writes it), loads the
weights strictly and returns the same `CLIP_VISION` object, so everything downstream is real.
"""

from __future__ import annotations

from pathlib import Path


class TinyCLIPVisionLoader:
    """`Load CLIP Vision` for towers of any size: config from `<clip_name>.json`."""

    @classmethod
    def INPUT_TYPES(cls):
        import folder_paths

        return {"required": {"clip_name": (folder_paths.get_filename_list("clip_vision"),)}}

    RETURN_TYPES = ("CLIP_VISION",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, clip_name: str):
        import comfy.clip_vision
        import comfy.utils
        import folder_paths

        path = Path(folder_paths.get_full_path_or_raise("clip_vision", clip_name))
        config = path.with_name(path.stem + ".json")
        if not config.is_file():
            raise FileNotFoundError(f"TinyCLIPVisionLoader: no config {config} beside {path.name}")
        model = comfy.clip_vision.ClipVisionModel(str(config))
        missing, unexpected = model.load_sd(comfy.utils.load_torch_file(str(path)))
        if missing or unexpected:
            raise ValueError(f"TinyCLIPVisionLoader: {path.name}: missing {missing}, unexpected {unexpected}")
        return (model,)


NODE_CLASS_MAPPINGS = {"TinyCLIPVisionLoader": TinyCLIPVisionLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"TinyCLIPVisionLoader": "Load CLIP Vision (test, any size)"}
