"""ComfyUI's model folders, found without importing ComfyUI (for the command-line model check).

Inside ComfyUI the pack asks `folder_paths` (nodes/routes.py). From a shell there is
no running ComfyUI, so this reads the same two sources ComfyUI reads at start-up:
`<ComfyUI>/models/<folder>` and the entries of `<ComfyUI>/extra_model_paths.yaml`
(each section's `base_path`, relative to the YAML file when not absolute, joined with
each line of the folder's value), in that order.
"""

from __future__ import annotations

import os
from collections.abc import Iterable


def extra_paths(yaml_path: str, folder: str) -> list[str]:
    """Directories an `extra_model_paths.yaml` adds for `folder` (empty when none or unreadable)."""
    try:
        import yaml

        with open(yaml_path, encoding="utf-8") as stream:
            config = yaml.safe_load(stream) or {}
    except (OSError, ImportError, ValueError):
        return []
    yaml_dir = os.path.dirname(os.path.abspath(yaml_path))
    out: list[str] = []
    for section in config.values() if isinstance(config, dict) else []:
        if not isinstance(section, dict) or not isinstance(section.get(folder), str):
            continue
        base = section.get("base_path")
        if isinstance(base, str):
            base = os.path.expandvars(os.path.expanduser(base))
            base = base if os.path.isabs(base) else os.path.join(yaml_dir, base)
        for line in section[folder].splitlines():
            line = line.strip()
            if line:
                full = os.path.join(base, line) if base else (line if os.path.isabs(line) else os.path.join(yaml_dir, line))
                out.append(os.path.normpath(full))
    return out


def comfy_model_folders(root: str, names: Iterable[str]) -> dict[str, list[str]]:
    """`{folder: [directories that exist]}` for a ComfyUI checkout at `root`."""
    yaml_path = os.path.join(root, "extra_model_paths.yaml")
    folders = {}
    for name in names:
        candidates = [os.path.join(root, "models", name), *extra_paths(yaml_path, name)]
        folders[name] = [os.path.abspath(d) for d in dict.fromkeys(candidates) if os.path.isdir(d)]
    return folders
