"""Fixtures for tests that run against a real ComfyUI (found by support.comfy_harness).

* ``comfy_runtime``: ComfyUI booted as a library (``--cpu``), pack not loaded. For checks that
  do not depend on this pack.
* ``comfy``: the same, with this pack loaded through ``nodes.load_custom_node``. Skips while the
  pack has no ``__init__.py``; fails with ComfyUI's reason if the pack does not import.
* ``comfy_server``: a real ComfyUI server (``python main.py``) on 127.0.0.1 with a temporary
  base directory, this pack and the test nodes linked in, and tiny random-weight models under
  the published names (``support.comfy_server``). Started once per session, on first use;
  always stopped.
* ``served``: one executor with the value nodes the bad-input catalogue's prompts start
  from (``support.bad_input.Served``), one per test module.
* ``model_dirs``: a temporary ``models/`` tree whose ``ipadapter``, ``clip_vision`` and
  ``controlnet`` folders are registered first in ``folder_paths`` for one test.

Every test in this folder gets the ``integration`` marker. Outputs of SaveImage & co. go to a
temporary folder, never into the ComfyUI checkout.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest
from support import comfy_harness
from support import comfy_server as server_support
from support.bad_input import Served

MODEL_FOLDERS = ("ipadapter", "clip_vision", "controlnet")

# ComfyUI's command line for the whole session (read once, at boot). Override with e.g.
# COMFYUI_TEST_ARGS="--cpu --fp32-text-enc" (CLIP vision is stored in the text-encoder dtype,
# fp16 by default, which fp32 parity checks cannot use).
TEST_ARGV = tuple(shlex.split(os.environ.get("COMFYUI_TEST_ARGS", "--cpu")))


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).resolve().parent
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(here):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def comfyui_path() -> Path:
    """The ComfyUI checkout the tests use; skips, saying how to provide one, when there is none."""
    try:
        path = comfy_harness.find_comfyui()
    except comfy_harness.ComfyHarnessError as exc:
        pytest.skip(str(exc))
    if path is None:
        pytest.skip(comfy_harness.COMFYUI_NOT_FOUND)
    return path


@pytest.fixture(scope="session")
def comfy_runtime(comfyui_path, tmp_path_factory) -> comfy_harness.Comfy:
    comfy = comfy_harness.boot_comfyui(comfyui_path, TEST_ARGV)
    base = tmp_path_factory.mktemp("comfy_io")
    for name, setter in (
        ("output", comfy.folder_paths.set_output_directory),
        ("temp", comfy.folder_paths.set_temp_directory),
        ("input", comfy.folder_paths.set_input_directory),
    ):
        (base / name).mkdir()
        setter(str(base / name))
    return comfy


@pytest.fixture(scope="session")
def comfy(comfy_runtime) -> comfy_harness.Comfy:
    if not (comfy_harness.REPO_ROOT / "__init__.py").is_file():
        pytest.skip(f"the pack has no {comfy_harness.REPO_ROOT / '__init__.py'} yet")
    comfy_harness.load_pack(comfy_harness.REPO_ROOT, comfy_runtime)
    return comfy_runtime


@pytest.fixture(scope="session")
def pack(comfy) -> comfy_harness.LoadedPack:
    """This pack as ComfyUI registered it (node classes by id)."""
    return comfy_harness.load_pack(comfy_harness.REPO_ROOT, comfy)


@pytest.fixture(scope="session")
def comfy_server(comfyui_path, request, tmp_path_factory) -> server_support.ComfyServer:
    base = tmp_path_factory.mktemp("comfy_server")
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    server_support.write_tiny_models(base, cache_dir=cache.mkdir("tiny_models") if cache else None)
    with server_support.comfy_server(base, comfyui=comfyui_path) as server:
        yield server


@pytest.fixture(scope="module")
def served(comfy, request, tmp_path_factory) -> Served:
    served = Served.start(comfy, tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]))
    yield served
    served.close()


@pytest.fixture
def model_dirs(comfy_runtime, tmp_path) -> dict[str, Path]:
    """``{folder_name: Path}`` for fresh ``ipadapter``/``clip_vision``/``controlnet`` folders.

    Registered with ``folder_paths.add_model_folder_path(..., is_default=True)`` so loaders list
    these files first; unregistered again after the test. The extension set of a folder the
    pack has not declared is left as ComfyUI makes it (empty).
    """
    fp = comfy_runtime.folder_paths
    dirs = {}
    for name in MODEL_FOLDERS:
        path = tmp_path / "models" / name
        path.mkdir(parents=True)
        fp.add_model_folder_path(name, str(path), is_default=True)
        fp.filename_list_cache.pop(name, None)
        dirs[name] = path
    yield dirs
    for name, path in dirs.items():
        entry = fp.folder_names_and_paths.get(fp.map_legacy(name))
        if entry is not None and str(path) in entry[0]:
            entry[0].remove(str(path))
        fp.filename_list_cache.pop(name, None)
        if hasattr(fp, "cache_helper"):
            fp.cache_helper.clear()
