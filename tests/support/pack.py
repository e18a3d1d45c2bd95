"""Import this repository as a package under a unique name, without ComfyUI.

The repo's top level has `nodes/` and `utils/`, which would shadow ComfyUI's own
`nodes.py` and `utils/` if the repo root were put on sys.path. Instead the pack
is registered as `ipadapter_pack` (its `__init__.py` imports nothing), and tests
import the pure core as `ipadapter_pack.ip_adapter`.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[2]
PACK_NAME = "ipadapter_pack"


def import_pack(name: str = PACK_NAME) -> ModuleType:
    """Register the repo as package `name` (idempotent) and return it."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
