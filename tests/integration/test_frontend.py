"""The shipped UI workflows in ComfyUI's real frontend, served by a real ComfyUI server.

A ComfyUI 0.8.0 server runs on 127.0.0.1 (``support.comfy_server``) with only this pack in a
temporary ``custom_nodes`` (a link to this repository), never the packs of the checkout. Its
temporary ``models/`` holds an empty file under each model name the workflows use and its
``input/`` the images they name: the frontend's combo lists are the server's file lists, and no
prompt runs here. Headless Chromium (Debian's, driven by Playwright; see ``support.frontend``)
opens the served frontend (comfyui-frontend-package) and:

* the server's ``/workflow_templates`` lists every UI workflow of this pack, and the frontend's
  template browser ("Browse Templates", EXTENSIONS -> this pack) shows a card for each and opens
  one from ``/api/workflow_templates/<pack>/<name>.json``;
* each workflow loads through ``app.loadGraphData`` (what "Open" does) with no node box
  overlapping another as rendered (title bar included) and no saved size below what the
  frontend needs for the node's widgets, no missing-node dialog, no error toast, no console
  error from this server, every node type known, every combo value among the server's options,
  every number within its widget's range, and the values where the file put them;
* the frontend's own "Export (API)" (``app.graphToPrompt``) of each loaded workflow equals its
  twin in ``workflows/api/``;
* each card's thumbnail (``<name>.jpg``) is served;
* the node search lists every node of this pack for "ipadapter" and for "IP-Adapter";
* a broken copy (unknown node type, a model file that does not exist, a weight out of range,
  overlapping and undersized nodes) is
  reported by the same checks, so they can fail.

Skips with the reason when Playwright or Chromium is missing or Chromium does not start
(``bash .ci/run`` installs both). Every wait is bounded; the server is always stopped.
"""

from __future__ import annotations

import copy
import json
import logging
import time
import urllib.request
from pathlib import Path

import pytest
from support import comfy_harness
from support import comfy_server as server_support
from support import frontend as fe
from support import frontend_models as fm
from support import workflow_files as wf
from support import workflow_layout as layout

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)

UI_WORKFLOWS = wf.ui_workflows()
PAGE_TIMEOUT_S = 120
PACK_DIR_NAME = server_support.PACK_DIR_NAME
TEMPLATE_CATEGORY = PACK_DIR_NAME  # the frontend names custom-node templates by the pack's folder


def ids(path: Path) -> str:
    return path.stem


@pytest.fixture(scope="module")
def server(comfyui_path, tmp_path_factory):
    if reason := fe.browser_unavailable_reason():
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("frontend_server")
    fm.fill_base_dir(base, UI_WORKFLOWS)
    started = time.monotonic()
    only_this_pack = {PACK_DIR_NAME: comfy_harness.REPO_ROOT}
    with server_support.comfy_server(base, comfyui=comfyui_path, packs=only_this_pack) as running:
        log.info("ComfyUI ready in %.1f s at %s", time.monotonic() - started, running.url)
        yield running


@pytest.fixture(scope="module")
def frontend(server):
    try:
        with fe.open_frontend(server.url, PAGE_TIMEOUT_S) as page:
            yield page
    except fe.BrowserUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def clean_page(frontend):
    """The page with no dialog left open by an earlier test (a reload closes them)."""
    if frontend.open_dialogs():
        frontend.reload(PAGE_TIMEOUT_S)
    assert frontend.open_dialogs() == [], "a dialog is open right after the page loaded"
    return frontend


def _fetch_json(url: str):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def test_server_lists_and_serves_every_workflow_as_a_template(server) -> None:
    listed = _fetch_json(server.url + "/workflow_templates")
    assert sorted(listed.get(PACK_DIR_NAME, [])) == sorted(p.stem for p in UI_WORKFLOWS), listed
    assert set(listed) == {PACK_DIR_NAME}, "only this pack is installed on the test server"
    for path in UI_WORKFLOWS:
        served = _fetch_json(f"{server.url}/api/workflow_templates/{PACK_DIR_NAME}/{path.name}")
        assert served == wf.load(path), f"{path.name} served differently from the file"
        url = f"{server.url}/api/workflow_templates/{PACK_DIR_NAME}/{path.stem}.jpg"  # the card's thumbnail
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.headers["Content-Type"] == "image/jpeg" and len(response.read()) < 100_000, url


def test_template_browser_shows_and_opens_the_workflows(clean_page) -> None:
    cards = clean_page.template_cards(TEMPLATE_CATEGORY)
    assert sorted(cards) == sorted(p.stem for p in UI_WORKFLOWS)
    chosen = UI_WORKFLOWS[0]
    clean_page.open_template(chosen.stem)
    assert fe.graph_problems(clean_page.graph_report(), wf.load(chosen)) == []
    assert clean_page.open_dialogs() == []


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=ids)
def test_workflow_opens_without_missing_nodes_or_invalid_widgets(clean_page, tmp_path, path: Path) -> None:
    workflow = wf.load(path)
    clean_page.load_workflow(workflow, path.name)
    problems = fe.graph_problems(clean_page.graph_report(), workflow)
    boxes = layout.rendered_boxes(clean_page)
    problems += layout.overlaps(boxes) + layout.undersized(workflow, boxes)
    problems += [f"dialog: {text}" for text in clean_page.open_dialogs()]
    problems += [f"toast: {text}" for text in clean_page.error_toasts()]
    problems += clean_page.console_errors()
    if problems:
        clean_page.page.screenshot(path=str(tmp_path / f"{path.stem}.png"))
    assert problems == [], f"{path.name} (screenshot in {tmp_path}):\n" + "\n".join(problems)


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=ids)
def test_frontend_export_equals_the_api_twin(clean_page, path: Path) -> None:
    clean_page.load_workflow(wf.load(path), path.name)
    exported = clean_page.export_api()
    twin = wf.load(wf.api_twin(path))
    wf.assert_same_api_graph(exported, twin)


def test_search_finds_every_node_of_the_pack_by_its_name(server, clean_page) -> None:
    """Typing "ipadapter" or "IP-Adapter" in the node search lists all of the pack's nodes."""
    info = _fetch_json(server.url + "/object_info")
    ours = {v["display_name"] for v in info.values() if v["python_module"].endswith(PACK_DIR_NAME)}
    assert len(ours) >= 9, ours
    clean_page.load_workflow({"nodes": [], "links": [], "groups": [], "config": {}, "extra": {}, "version": 0.4,
                              "last_node_id": 0, "last_link_id": 0}, "empty.json", settle_ms=300)
    for query in ("ipadapter", "IP-Adapter"):
        listed = clean_page.search_nodes(query)
        assert ours <= set(listed), f"{query!r} does not list {sorted(ours - set(listed))}"


def test_the_checks_catch_a_broken_workflow(clean_page) -> None:
    """Negative control: the same checks on a copy with three planted faults."""
    workflow = copy.deepcopy(wf.load(wf.WORKFLOWS_DIR / "sd15_image_prompt.json"))
    nodes = {n["type"]: n for n in workflow["nodes"]}
    nodes["CheckpointLoaderSimple"]["widgets_values"] = ["not-on-this-server.safetensors"]
    nodes["ApplyIPAdapter"]["widgets_values"][0] = 7.5  # weight max is 3
    nodes["EncodeImagePrompt"]["type"] = "NoSuchIPAdapterNode"
    nodes["EmptyLatentImage"]["pos"] = list(nodes["KSampler"]["pos"])  # drawn over the sampler
    nodes["ApplyIPAdapter"]["size"] = [300, 170]  # the old saved size: the frontend draws it taller
    clean_page.load_workflow(workflow, "broken.json")
    boxes = layout.rendered_boxes(clean_page)
    problems = "\n".join(fe.graph_problems(clean_page.graph_report(), workflow)
                         + layout.overlaps(boxes) + layout.undersized(workflow, boxes))
    assert "(EmptyLatentImage) overlaps node" in problems and "(KSampler)" in problems
    assert "(ApplyIPAdapter): saved size [300, 170] < needed" in problems
    assert "(NoSuchIPAdapterNode): node type unknown" in problems
    assert "ckpt_name: 'not-on-this-server.safetensors' not among" in problems
    assert "widget weight: 7.5 outside [-1, 3]" in problems
    assert any("missing nodes" in text.lower() for text in clean_page.open_dialogs())
