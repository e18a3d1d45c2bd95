"""Registering this pack's model folder with ComfyUI's `folder_paths`."""

from __future__ import annotations

import os
from types import ModuleType

IPADAPTER_FOLDER = "ipadapter"
#: Full OpenCLIP checkpoints (both towers) for the ScoreImagePrompt node (CLIP-I / CLIP-T).
CLIP_SCORING_FOLDER = "clip_scoring"
ADAPTER_EXTENSIONS = {".safetensors", ".sft", ".bin", ".pt", ".pth"}


def register_model_folder(folder_paths: ModuleType, name: str = IPADAPTER_FOLDER) -> None:
    """Add `models/<name>` to ComfyUI's search paths and make sure files in it are listed.

    ComfyUI has no `ipadapter` folder of its own. An `extra_model_paths.yaml` entry
    may already have created the entry (with an empty extension set, so nothing
    would be listed); paths configured there are kept and come first.
    """
    default = os.path.join(folder_paths.models_dir, name)
    folder_paths.add_model_folder_path(name, default)
    _, extensions = folder_paths.folder_names_and_paths[name]
    if not extensions:
        extensions.update(ADAPTER_EXTENSIONS)
