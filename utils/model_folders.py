"""Registering this pack's model folders with ComfyUI's `folder_paths`, and creating them."""

from __future__ import annotations

import logging
import os
from types import ModuleType

logger = logging.getLogger(__name__)

IPADAPTER_FOLDER = "ipadapter"
#: Full OpenCLIP checkpoints (both towers) for the ScoreImagePrompt node (CLIP-I / CLIP-T).
CLIP_SCORING_FOLDER = "clip_scoring"
ADAPTER_EXTENSIONS = {".safetensors", ".sft", ".bin", ".pt", ".pth"}


def register_model_folder(folder_paths: ModuleType, name: str = IPADAPTER_FOLDER) -> None:
    """Add `models/<name>` to ComfyUI's search paths, make sure files in it are listed, and create it.

    ComfyUI has no `ipadapter` folder of its own. An `extra_model_paths.yaml` entry
    may already have created the entry (with an empty extension set, so nothing
    would be listed); paths configured there are kept and come first. The default
    folder is created so that users find where to put their files (the README
    says it exists); a read-only install only logs why it could not.
    """
    default = os.path.join(folder_paths.models_dir, name)
    folder_paths.add_model_folder_path(name, default)
    _, extensions = folder_paths.folder_names_and_paths[name]
    if not extensions:
        extensions.update(ADAPTER_EXTENSIONS)
    try:
        os.makedirs(default, exist_ok=True)
    except OSError as exc:
        logger.warning("Could not create %s (%s); put model files in a folder listed in "
                       "extra_model_paths.yaml under '%s' instead.", default, exc.strerror or exc, name)


def comfy_folders(*names: str) -> dict[str, list[str]]:
    """`{folder name: directories}` as ComfyUI resolves them (models/ and extra_model_paths.yaml)."""
    import folder_paths

    return {name: list(folder_paths.get_folder_paths(name)) for name in names}
