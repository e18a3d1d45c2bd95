"""Validate an API-format prompt with ComfyUI's own validation, its model files stood in by empty files.

Why: a workflow names published model files (checkpoints, adapters, encoders) that a
test machine does not have; ComfyUI's file-list combos only need the names to exist.
Every file the prompt names is created empty in its model folder (and each LoadImage
input as a small picture), the folders' listing caches are dropped so ComfyUI sees
them, and the extra folders are unregistered again afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from . import workflow_files as wf
from .comfy_prompts import PromptRunner


def validate_with_placeholder_files(folder_paths: Any, prompt: Mapping[str, Any], model_dirs: Mapping[str, Path],
                                    tmp_path: Path, extra_folders: Iterable[str] = ("checkpoints",)) -> dict:
    """`PromptRunner().validate(prompt)` with every named file present; `extra_folders` are made under tmp_path."""
    extra = {name: tmp_path / name for name in extra_folders}
    for name, folder in extra.items():
        folder.mkdir()
        folder_paths.add_model_folder_path(name, str(folder), is_default=True)
    folders = {**model_dirs, **extra}
    try:
        for node in prompt.values():
            for name, value in node["inputs"].items():
                if name in wf.MODEL_FILE_WIDGETS:  # empty files satisfy the file-list combos
                    (folders[wf.MODEL_FILE_WIDGETS[name]] / value).write_bytes(b"")
                if node["class_type"] == "LoadImage" and name == "image":
                    Image.new("RGB", (64, 64)).save(Path(folder_paths.get_input_directory()) / value)
        for name in folders:
            folder_paths.filename_list_cache.pop(name, None)
        return PromptRunner().validate(prompt)
    finally:
        for name, folder in extra.items():
            folder_paths.folder_names_and_paths[name][0].remove(str(folder))
            folder_paths.filename_list_cache.pop(name, None)
