"""A fresh install with no models: the frontend warns on open, with downloads, and the model check says what to get.

A real ComfyUI 0.8.0 server with only this pack and empty model folders (what a new user
has before downloading anything), opened in headless Chromium (support.frontend):

* (the metadata rule itself, file by file, is checked without a browser in
  ``tests/unit/test_workflow_metadata.py``)
* opening each workflow shows the frontend's missing-models dialog listing every one of them as
  ``<directory> / <name>``, none with "Invalid directory" or a refused source;
* opening the start template from the template browser does the same;
* ``GET /ip_adapter/models`` answers with the starter pair to download and where it goes, and
  the pack created ``models/ipadapter`` on load.
"""

from __future__ import annotations

import json
import urllib.request

import pytest
from support import comfy_harness
from support import comfy_server as server_support
from support import frontend as fe
from support import frontend_models as fm
from support import workflow_files as wf

pytestmark = pytest.mark.slow

UI_WORKFLOWS = wf.ui_workflows()
START = "sd15_image_prompt"
PACK_DIR_NAME = server_support.PACK_DIR_NAME


@pytest.fixture(scope="module")
def server(comfyui_path, tmp_path_factory):
    if reason := fe.browser_unavailable_reason():
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("no_models_server")
    fm.fill_base_dir(base, UI_WORKFLOWS, with_models=False)
    (base / "models" / "ipadapter").rmdir()  # the pack must create it
    with server_support.comfy_server(base, comfyui=comfyui_path, packs={PACK_DIR_NAME: comfy_harness.REPO_ROOT}) as s:
        yield s


@pytest.fixture(scope="module")
def frontend(server):
    try:
        with fe.open_frontend(server.url, 120) as page:
            yield page
    except fe.BrowserUnavailable as exc:
        pytest.skip(str(exc))


def _close_dialogs(frontend) -> None:
    """Close what is open (a reload would restore the last workflow and its dialog)."""
    for _ in range(5):
        if not frontend.open_dialogs():
            return
        frontend.page.keyboard.press("Escape")
        frontend.page.wait_for_timeout(300)
    assert frontend.open_dialogs() == [], "a dialog does not close"


def _missing_models_dialog(frontend) -> str:
    """The whole text of the one missing-models dialog (``open_dialogs`` cuts texts at 500 characters)."""
    texts = frontend.page.evaluate("() => [...document.querySelectorAll('.p-dialog')].map(d => d.innerText)")
    dialogs = [d for d in texts if "missing models" in d.lower()]
    assert len(dialogs) == 1, texts
    return dialogs[0]


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_opening_a_workflow_without_its_models_lists_them_for_download(frontend, path) -> None:
    _close_dialogs(frontend)
    frontend.load_workflow(wf.load(path), path.name, settle_ms=2000)
    text = _missing_models_dialog(frontend)
    for directory, name in sorted(fm.models_of([path])):
        assert f"{directory} / {name}" in text, text
    assert "Invalid directory" not in text and "not allowed" not in text, text


def test_the_start_template_warns_when_opened_from_the_template_browser(frontend) -> None:
    _close_dialogs(frontend)
    frontend.open_template_browser()
    frontend.template_cards(PACK_DIR_NAME)
    frontend.page.locator(f'[data-testid="template-workflow-{START}"]').click()
    frontend.page.get_by_text("missing models", exact=False).first.wait_for(timeout=60_000)
    text = _missing_models_dialog(frontend)
    assert "ipadapter / ip-adapter_sd15.safetensors" in text
    assert "clip_vision / CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors" in text


def test_model_check_route_names_the_starter_pair(server) -> None:
    assert (server.base_dir / "models" / "ipadapter").is_dir(), "the pack did not create models/ipadapter"
    with urllib.request.urlopen(server.url + "/api/ip_adapter/models", timeout=60) as response:
        report = json.loads(response.read())
    assert report["adapters"] == [] and report["ready"] == 0
    missing = {m["name"]: m for m in report["missing"]}
    assert missing["ip-adapter_sd15.safetensors"]["folder"] == "ipadapter"
    encoder = missing["CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"]
    assert (encoder["repo"], encoder["path"], encoder["rename"]) == (
        "h94/IP-Adapter", "models/image_encoder/model.safetensors", True)
