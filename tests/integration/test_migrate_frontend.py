"""Converted ComfyUI_IPAdapter_plus UI workflows open in ComfyUI's real frontend with no missing node.

A ComfyUI server with only this pack (not the incumbent) serves the frontend; its models and
input folders hold empty files / small images under every name the converted workflows use.
Each converted UI file from tests/data/migrate/ui/ is loaded as "Open" does, and
`support.frontend.graph_problems` must find nothing: every node type known (an incumbent
node left in the file would be a missing node), every combo value among the server's options,
every number in range, and the widget values where the converter put them. Skips when
Playwright or Chromium is missing (see test_frontend.py).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from PIL import Image
from support import comfy_harness
from support import comfy_server as server_support
from support import frontend as fe
from support import workflow_files as wf
from support.pack import import_pack

pytestmark = pytest.mark.slow

migrate = importlib.import_module(f"{import_pack().__name__}.ip_adapter.migrate")
DATA = Path(__file__).resolve().parents[1] / "data" / "migrate"
NAMES = ("unified_advanced", "loader_simple_prep", "embeds", "style_composition_sdxl", "batch_tiled_prep")
PAGE_TIMEOUT_S = 120


def _converted(kind: str, name: str) -> dict:
    converted, report = migrate.convert(json.loads((DATA / kind / f"{name}.json").read_text()))
    assert not report.needs_incumbent, report.text()
    return converted


@pytest.fixture(scope="module")
def page(comfyui_path, tmp_path_factory):
    if reason := fe.browser_unavailable_reason():
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("migrate_frontend")
    (base / "user" / "default").mkdir(parents=True)
    (base / "user" / "default" / "comfy.settings.json").write_text(json.dumps(fe.FRONTEND_SETTINGS))
    (base / "input").mkdir()
    for name in NAMES:
        for node in _converted("api", name).values():
            for key, value in node["inputs"].items():
                if key in wf.MODEL_FILE_WIDGETS:
                    (base / "models" / wf.MODEL_FILE_WIDGETS[key]).mkdir(parents=True, exist_ok=True)
                    (base / "models" / wf.MODEL_FILE_WIDGETS[key] / value).touch()
                if node["class_type"] == "LoadImage" and key == "image":
                    Image.new("RGB", (64, 64), (90, 120, 150)).save(base / "input" / value)
    packs = {server_support.PACK_DIR_NAME: comfy_harness.REPO_ROOT}
    with server_support.comfy_server(base, comfyui=comfyui_path, packs=packs) as server:
        try:
            with fe.open_frontend(server.url, PAGE_TIMEOUT_S) as frontend:
                yield frontend
        except fe.BrowserUnavailable as exc:
            pytest.skip(str(exc))


@pytest.mark.parametrize("name", NAMES)
def test_converted_workflow_opens_without_missing_nodes(page, tmp_path, name: str) -> None:
    if page.open_dialogs():
        page.reload(PAGE_TIMEOUT_S)
    workflow = _converted("ui", name)
    page.load_workflow(workflow, f"{name}.json")
    problems = fe.graph_problems(page.graph_report(), workflow)
    problems += [f"dialog: {text}" for text in page.open_dialogs()]
    problems += [f"toast: {text}" for text in page.error_toasts()]
    problems += page.console_errors()
    if problems:
        page.page.screenshot(path=str(tmp_path / f"{name}.png"))
    assert problems == [], f"{name} (screenshot in {tmp_path}):\n" + "\n".join(problems)


def test_the_incumbent_workflow_itself_shows_missing_nodes(page) -> None:
    """Negative control: the unconverted file, on a server without the incumbent, is reported."""
    if page.open_dialogs():
        page.reload(PAGE_TIMEOUT_S)
    workflow = json.loads((DATA / "ui" / "unified_advanced.json").read_text())
    page.load_workflow(workflow, "incumbent.json")
    problems = "\n".join(fe.graph_problems(page.graph_report(), workflow))
    assert "(IPAdapterAdvanced): node type unknown" in problems
    assert any("missing nodes" in text.lower() for text in page.open_dialogs())
