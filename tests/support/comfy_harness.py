"""Find a ComfyUI checkout, boot it as a library, and load this pack the way ComfyUI does.

Everything here drives ComfyUI's own code paths:

* ``boot_comfyui`` imports ComfyUI's modules in the order ``main.py`` does, with ``--cpu`` (or
  other flags) parsed by ``comfy/cli_args.py`` itself.
* ``load_pack`` calls ``nodes.load_custom_node`` (the function ComfyUI runs for every folder in
  ``custom_nodes/`` at start-up), so V1 ``NODE_CLASS_MAPPINGS`` and V3 ``comfy_entrypoint``
  packs register exactly as on a real server.
* ``run_node`` calls one node through ``execution.get_output_data``, the executor's own call path
  (V1 ``FUNCTION`` or V3 ``EXECUTE_NORMALIZED``, sync or async).
* ``support.comfy_prompts.PromptRunner`` / ``run_prompt`` validate an API-format prompt with ``execution``'s validator
  and run it through ``execution.PromptExecutor`` with a server stand-in that records every
  message, so tests can count executed and cached nodes.

The repository root is never put on ``sys.path``: ComfyUI has a top-level ``nodes.py`` and a
``utils`` package, and so does this pack.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from .comfy_errors import (
    ComfyHarnessError,
    PackImportError,
    PromptExecutionError,
    PromptValidationError,
)
from .comfy_location import (
    COMFYUI_NOT_FOUND,
    DEFAULT_COMFYUI,
    REPO_ROOT,
    find_comfyui,
    is_comfyui_root,
)

__all__ = [
    "COMFYUI_NOT_FOUND", "DEFAULT_COMFYUI", "REPO_ROOT", "Comfy", "ComfyHarnessError", "LoadedPack",
    "PackImportError", "PromptExecutionError", "PromptValidationError", "boot_comfyui", "booted",
    "find_comfyui", "is_comfyui_root", "load_pack", "run_node",
]

# Top-level module names that exist both in ComfyUI and (as packages) in this repo, or that
# ComfyUI owns. If one of them was imported from somewhere else first, booting would silently
# mix two code bases.
_COMFY_OWNED_MODULES = ("nodes", "utils", "folder_paths", "execution", "comfy", "comfy_api")


# --------------------------------------------------------------------------------------------
# Booting
# --------------------------------------------------------------------------------------------

@dataclass
class Comfy:
    """A booted ComfyUI: its root, argv and the modules tests need."""

    path: Path
    argv: tuple[str, ...]
    nodes: ModuleType
    folder_paths: ModuleType
    model_management: ModuleType
    execution: ModuleType
    args: Any
    builtin_node_ids: frozenset[str]
    loaded_extras: set[str] = field(default_factory=set)

    def node_class(self, node_id: str) -> type:
        """The class registered under ``node_id`` in ``nodes.NODE_CLASS_MAPPINGS``."""
        try:
            return self.nodes.NODE_CLASS_MAPPINGS[node_id]
        except KeyError:
            raise KeyError(
                f"no node {node_id!r} registered in ComfyUI; was the pack loaded "
                f"(load_pack) or the comfy_extras module (load_builtin_extras)?"
            ) from None

    def load_builtin_extras(self, files: Iterable[str] | None = None) -> None:
        """Register ComfyUI's own ``comfy_extras`` nodes, as ``nodes.init_extra_nodes`` does.

        ``files`` names modules such as ``"nodes_latent.py"``; None loads all of them (the
        ``init_builtin_extra_nodes`` list, which takes a few seconds).
        """
        if files is None:
            if "*" in self.loaded_extras:
                return
            failed = asyncio.run(self.nodes.init_builtin_extra_nodes())
            self.loaded_extras.add("*")
            if failed:
                logging.getLogger(__name__).warning("comfy_extras that did not import: %s", failed)
            return
        extras_dir = self.path / "comfy_extras"
        for name in files:
            if name in self.loaded_extras or "*" in self.loaded_extras:
                continue
            ok = asyncio.run(
                self.nodes.load_custom_node(str(extras_dir / name), module_parent="comfy_extras")
            )
            if not ok:
                raise ComfyHarnessError(f"ComfyUI could not import comfy_extras/{name}")
            self.loaded_extras.add(name)


_BOOTED: Comfy | None = None


def _module_is_under(module: ModuleType, root: Path) -> bool:
    locations = []
    if getattr(module, "__file__", None):
        locations.append(module.__file__)
    locations.extend(getattr(module, "__path__", []) or [])
    return any(Path(loc).resolve().is_relative_to(root) for loc in locations)


def boot_comfyui(
    path: os.PathLike | str | None = None,
    extra_argv: Sequence[str] = ("--cpu",),
) -> Comfy:
    """Import ComfyUI from ``path`` as a library, with ``extra_argv`` as its command line.

    Mirrors ``main.py``: ``comfy.options.enable_args_parsing()`` before ``comfy.cli_args`` is
    imported (so ``--cpu``, ``--fp32-unet``, ``--fp32-text-enc``... take effect), ComfyUI's own
    ``utils`` package imported before any module that puts ``comfy/`` on ``sys.path``
    (``nodes.py`` does), then ``nodes``, ``folder_paths``, ``comfy.model_management``,
    ``execution``, and ``nodes.init_public_apis()``. Built-in nodes of ``nodes.py`` (KSampler,
    CLIPVisionLoader, ControlNetLoader, ControlNetApplyAdvanced, ...) are registered by the
    import itself; ``comfy_extras`` nodes come from ``Comfy.load_builtin_extras``.

    Booting happens once per process: a second call returns the same ``Comfy`` and raises if it
    asks for another checkout or another argv (the flags are read at import time).
    """
    global _BOOTED
    root = Path(path).expanduser().resolve() if path is not None else find_comfyui()
    if root is None:
        raise ComfyHarnessError(COMFYUI_NOT_FOUND)
    if not is_comfyui_root(root):
        raise ComfyHarnessError(f"{root} is not a ComfyUI checkout (needs main.py, nodes.py, comfy/)")
    argv = tuple(extra_argv)

    if _BOOTED is not None:
        if _BOOTED.path != root or _BOOTED.argv != argv:
            raise ComfyHarnessError(
                f"ComfyUI was already booted from {_BOOTED.path} with argv {_BOOTED.argv}; "
                f"cannot re-boot from {root} with {argv} in the same process"
            )
        return _BOOTED

    for name in _COMFY_OWNED_MODULES:
        module = sys.modules.get(name)
        if module is not None and not _module_is_under(module, root):
            raise ComfyHarnessError(
                f"module {name!r} was already imported from {getattr(module, '__file__', module)}, "
                f"not from {root}; something put another {name!r} on sys.path before ComfyUI "
                f"booted (this repo's root must not be on sys.path)"
            )

    root_str = str(root)
    while root_str in sys.path:
        sys.path.remove(root_str)
    sys.path.insert(0, root_str)

    import comfy.options

    comfy.options.enable_args_parsing()
    already_parsed = "comfy.cli_args" in sys.modules
    saved_argv = sys.argv
    sys.argv = [str(root / "main.py"), *argv]
    try:
        from comfy import cli_args

        if already_parsed:
            # Imported earlier with default args: re-parse in place, unless the device was
            # already chosen from them.
            if "comfy.model_management" in sys.modules:
                raise ComfyHarnessError(
                    "comfy.model_management was imported before boot_comfyui; its device "
                    "choice ignored the harness argv"
                )
            vars(cli_args.args).update(vars(cli_args.parser.parse_args(argv)))
    finally:
        sys.argv = saved_argv

    # Must precede every module that inserts ComfyUI/comfy at sys.path[0] (nodes.py does):
    # after that, `import utils` would find comfy/utils.py and server.py would fail.
    # isort: off
    import utils.install_util  # ComfyUI's utils package, first
    import utils.extra_config  # noqa: F401

    import comfy.utils
    from comfy import model_management
    import execution
    import folder_paths
    import nodes
    # isort: on

    asyncio.run(nodes.init_public_apis())

    _BOOTED = Comfy(
        path=root,
        argv=argv,
        nodes=nodes,
        folder_paths=folder_paths,
        model_management=model_management,
        execution=execution,
        args=cli_args.args,
        builtin_node_ids=frozenset(nodes.NODE_CLASS_MAPPINGS),
    )
    return _BOOTED


def booted() -> Comfy:
    """The ``Comfy`` from an earlier ``boot_comfyui`` call."""
    if _BOOTED is None:
        raise ComfyHarnessError("ComfyUI is not booted; call boot_comfyui() first")
    return _BOOTED


# --------------------------------------------------------------------------------------------
# Loading the pack
# --------------------------------------------------------------------------------------------

@dataclass
class LoadedPack:
    """This pack as ComfyUI registered it."""

    path: Path
    module: ModuleType
    node_ids: tuple[str, ...]
    comfy: Comfy

    def node(self, node_id: str) -> type:
        """The pack's node class registered under ``node_id``."""
        if node_id not in self.node_ids:
            raise KeyError(f"the pack registered no node {node_id!r}; it has {list(self.node_ids)}")
        return self.comfy.node_class(node_id)

    __getitem__ = node

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.node_ids


_PACKS: dict[Path, LoadedPack] = {}


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def load_pack(repo_root: os.PathLike | str | None = None, comfy: Comfy | None = None) -> LoadedPack:
    """Load ``repo_root`` (this repo by default) with ``nodes.load_custom_node``.

    That is the call ComfyUI makes for each ``custom_nodes/`` entry at start-up (with the
    built-in node ids as ``ignore``, so a pack cannot replace a built-in node). Raises
    ``PackImportError`` with ComfyUI's logged reason (traceback included) when it refuses the
    pack. Cached per path.
    """
    comfy = comfy or booted()
    root = Path(repo_root or REPO_ROOT).resolve()
    if root in _PACKS:
        return _PACKS[root]
    init = root / "__init__.py"
    if not init.is_file():
        raise FileNotFoundError(f"{init} does not exist: the pack has no entry point yet")

    capture = _Capture()
    logger = logging.getLogger()
    logger.addHandler(capture)
    try:
        ok = asyncio.run(
            comfy.nodes.load_custom_node(
                str(root), ignore=set(comfy.builtin_node_ids), module_parent="custom_nodes"
            )
        )
    finally:
        logger.removeHandler(capture)
    if not ok:
        reason = "\n".join(capture.messages) or "(ComfyUI logged no reason)"
        raise PackImportError(f"ComfyUI could not load the pack at {root}:\n{reason}")

    module = sys.modules[str(root).replace(".", "_x_")]
    tag = f"custom_nodes.{comfy.nodes.get_module_name(str(root))}"
    node_ids = tuple(
        sorted(
            node_id
            for node_id, cls in comfy.nodes.NODE_CLASS_MAPPINGS.items()
            if getattr(cls, "RELATIVE_PYTHON_MODULE", None) == tag
        )
    )
    if not node_ids:
        raise PackImportError(f"ComfyUI loaded {root} but it registered no nodes")
    pack = LoadedPack(path=root, module=module, node_ids=node_ids, comfy=comfy)
    _PACKS[root] = pack
    return pack


# --------------------------------------------------------------------------------------------
# Running one node
# --------------------------------------------------------------------------------------------

def _is_v3(cls: type) -> bool:
    from comfy_api.internal import _ComfyNodeInternal

    return isinstance(cls, type) and issubclass(cls, _ComfyNodeInternal)


def run_node(node: type | str, /, *, return_ui: bool = False, inference_mode: bool = True, **inputs):
    """Call one node the way the executor does and return its outputs as a tuple.

    ``node`` is a class or a registered node id; ``inputs`` are the node's inputs by name,
    already resolved (tensors, MODEL objects...). The call goes through
    ``execution.get_output_data``: a fresh instance as in the executor, V1 ``FUNCTION`` or V3
    ``EXECUTE_NORMALIZED`` on a locked class clone, async nodes awaited, all under
    ``torch.inference_mode()`` like ``PromptExecutor``. Input validation is not run (use
    ``run_prompt`` for that). Outputs marked ``OUTPUT_IS_LIST`` come back as lists. With
    ``return_ui`` the result is ``(outputs, ui_dict)``.
    """
    import torch

    comfy = booted()
    execution = comfy.execution
    cls = comfy.node_class(node) if isinstance(node, str) else node
    input_data_all = {k: [v] for k, v in inputs.items()}
    v3_data: dict[str, Any] = {}
    if _is_v3(cls):
        from comfy_api.latest import _io

        _, _, v3_data = _io.get_finalized_class_inputs(cls.INPUT_TYPES(), inputs)
    v3_data["hidden_inputs"] = {}

    async def call():
        obj = cls()
        prompt_id, unique_id = "harness-" + uuid.uuid4().hex[:8], "harness-node"
        output, ui, has_subgraph, pending = await execution.get_output_data(
            prompt_id, unique_id, obj, input_data_all, v3_data=v3_data
        )
        if pending:
            results = await execution.resolve_map_node_over_list_results(output)
            output, ui, has_subgraph = execution.get_output_from_returns(results, obj)
        if has_subgraph:
            raise ComfyHarnessError(f"{cls.__name__} expanded into a subgraph; use run_prompt")
        return output, ui

    ctx = torch.inference_mode() if inference_mode else contextlib.nullcontext()
    with ctx:
        output, ui = asyncio.run(call())
    is_list = getattr(cls, "OUTPUT_IS_LIST", None) or [False] * len(output)
    values = tuple(slot if as_list else slot[0] for slot, as_list in zip(output, is_list))
    return (values, ui) if return_ui else values
