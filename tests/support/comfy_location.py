"""Where the ComfyUI used by the tests and benchmarks lives.

Order: ``$COMFYUI_PATH``; the ComfyUI whose ``custom_nodes/`` holds this repository;
``~/comfy/ComfyUI`` (comfy-cli's default workspace).
"""

from __future__ import annotations

import os
from pathlib import Path

from .comfy_errors import ComfyHarnessError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_COMFYUI = Path("~/comfy/ComfyUI").expanduser()

COMFYUI_NOT_FOUND = (
    "ComfyUI not found: set COMFYUI_PATH to a ComfyUI checkout, or install this pack in "
    "ComfyUI/custom_nodes, or put one at ~/comfy/ComfyUI"
)


def is_comfyui_root(path: os.PathLike | str) -> bool:
    """True if ``path`` looks like a ComfyUI checkout: ``main.py``, ``nodes.py`` and ``comfy/``."""
    p = Path(path)
    return (p / "main.py").is_file() and (p / "nodes.py").is_file() and (p / "comfy").is_dir()


def find_comfyui(repo_root: os.PathLike | str | None = None) -> Path | None:
    """Locate a ComfyUI checkout, or return None.

    Order: ``$COMFYUI_PATH``; the ComfyUI whose ``custom_nodes/`` holds this repository (walking
    up from the repository root); ``~/comfy/ComfyUI``. A set but invalid ``COMFYUI_PATH`` is an
    error rather than a silent fallback.
    """
    env = os.environ.get("COMFYUI_PATH")
    if env:
        p = Path(env).expanduser().resolve()
        if not is_comfyui_root(p):
            raise ComfyHarnessError(
                f"COMFYUI_PATH={env!r} is not a ComfyUI checkout (needs main.py, nodes.py, comfy/)"
            )
        return p

    start = Path(repo_root or REPO_ROOT).resolve()
    for parent in start.parents:
        if parent.name == "custom_nodes" and is_comfyui_root(parent.parent):
            return parent.parent

    if is_comfyui_root(DEFAULT_COMFYUI):
        return DEFAULT_COMFYUI.resolve()
    return None
