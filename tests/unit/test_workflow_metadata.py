"""Every workflow file names a download for each model it loads, and has its thumbnail (workflows/README.md).

Runs on every file in ``workflows/`` (new ones included) without ComfyUI or a browser;
``tests/integration/test_frontend_models.py`` shows the same metadata producing the frontend's
missing-models dialog.
"""

from __future__ import annotations

import copy

import pytest
from support import frontend_models as fm
from support import workflow_files as wf

UI_WORKFLOWS = wf.ui_workflows()


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_every_model_a_workflow_loads_has_download_metadata(path) -> None:
    assert fm.metadata_problems(wf.load(path)) == []


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_every_workflow_has_a_small_thumbnail_and_a_title(path) -> None:
    thumbnail = path.with_suffix(".jpg")
    assert thumbnail.is_file() and thumbnail.stat().st_size < 100_000, thumbnail
    assert thumbnail.read_bytes()[:3] == b"\xff\xd8\xff", "not a JPEG"
    groups = wf.load(path).get("groups") or []
    assert groups and len(groups[0].get("title", "")) > len(path.stem), "no readable title (groups[0].title)"


def test_the_start_workflow_is_marked() -> None:
    titles = {p.stem: (wf.load(p).get("groups") or [{}])[0].get("title", "") for p in UI_WORKFLOWS}
    assert [name for name, title in titles.items() if title.startswith("START HERE")] == ["sd15_image_prompt"]


def test_the_metadata_check_catches_a_missing_or_refused_entry() -> None:
    workflow = copy.deepcopy(wf.load(wf.WORKFLOWS_DIR / "sd15_image_prompt.json"))
    nodes = {n["type"]: n for n in workflow["nodes"]}
    del nodes["LoadIPAdapter"]["properties"]["models"]
    nodes["CLIPVisionLoader"]["properties"]["models"][0]["url"] = "https://example.com/model.safetensors"
    problems = "\n".join(fm.metadata_problems(workflow))
    assert "(LoadIPAdapter): 'ip-adapter_sd15.safetensors' has no properties.models entry" in problems
    assert "url 'https://example.com/model.safetensors' is not on" in problems


def test_only_a_published_pickle_may_be_a_non_safetensors_name() -> None:
    """The InstantX SD3.5 adapter exists only as ip-adapter.bin; any other .bin, or a wrong source, is flagged."""
    workflow = copy.deepcopy(wf.load(wf.WORKFLOWS_DIR / "sd35_image_prompt.json"))
    loader = next(n for n in workflow["nodes"] if n["type"] == "LoadIPAdapter")
    assert loader["widgets_values"][0].endswith(".bin") and fm.metadata_problems(workflow) == []
    loader["properties"]["models"][0]["url"] = "https://huggingface.co/someone/else/resolve/main/ip-adapter.bin"
    assert any("cannot be downloaded by the frontend" in p for p in fm.metadata_problems(workflow))
    loader["widgets_values"][0] = loader["properties"]["models"][0]["name"] = "ip-adapter_sd15.bin"
    loader["properties"]["models"][0]["url"] = "https://huggingface.co/h94/IP-Adapter/resolve/main/models/ip-adapter_sd15.bin"
    assert any("'ip-adapter_sd15.bin' cannot be downloaded" in p for p in fm.metadata_problems(workflow))
