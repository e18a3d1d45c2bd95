"""comfy_batch's preflight: the items checked against /object_info before any upload; failures grouped.

`/object_info` here is built in ComfyUI's format from the shipped API workflow itself (every
node class it uses, with each literal input a combo or a plain value), then a model file is
taken off the server's list.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ipadapter_pack.comfy_batch import cli, preflight
from ipadapter_pack.comfy_batch import plan as planning
from ipadapter_pack.comfy_batch.client import TransientError
from ipadapter_pack.comfy_batch.manifest import FAILED, Manifest
from ipadapter_pack.comfy_batch.runner import prepare
from support.pack import REPO_ROOT

WORKFLOW = REPO_ROOT / "workflows" / "api" / "sd15_image_prompt.json"
COMBOS = {"ckpt_name", "clip_name", "adapter_name", "image", "sampler_name", "scheduler", "fit"}


def object_info(workflow: dict, drop: str | None = None) -> dict:
    """What `GET /object_info` answers for the workflow's nodes; `drop` is a file not on the server."""
    info: dict = {}
    for node in workflow.values():
        required = info.setdefault(node["class_type"], {"input": {"required": {}, "optional": {}}})["input"]["required"]
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                required[name] = ["MODEL", {}]
            elif name in COMBOS:
                required[name] = ["COMBO", {"options": [v for v in (value, "other.safetensors") if v != drop]}]
            else:
                required[name] = ["STRING" if isinstance(value, str) else "FLOAT", {}]
    return info


@pytest.fixture
def workflow() -> dict:
    return planning.load_workflow(WORKFLOW)


def _grid(workflow: dict, tmp_path: Path, adapters: list[str]) -> list:
    refs = tmp_path / "refs"
    refs.mkdir()
    for i in range(3):
        (refs / f"r{i}.png").write_bytes(bytes([i]))
    axes = [("Reference image.image", planning.image_files(refs)), ("KSampler.seed", [1, 2]),
            ("Load IP-Adapter.adapter_name", adapters)]
    return prepare(planning.build_plan(workflow, axes, [], None, tmp_path))


def test_a_good_batch_passes(workflow, tmp_path) -> None:
    assert preflight.check(_grid(workflow, tmp_path, ["ip-adapter_sd15.safetensors"]), object_info(workflow)) == []


def test_a_missing_model_stops_the_batch_with_one_grouped_message(workflow, tmp_path) -> None:
    prepared = _grid(workflow, tmp_path, ["ip-adapter_sd15.safetensors"])
    assert len(prepared) == 6
    with pytest.raises(preflight.PreflightError) as caught:
        preflight.check(prepared, object_info(workflow, drop="ip-adapter_sd15.safetensors"))
    lines = str(caught.value).splitlines()
    assert len(lines) == 2, lines  # six identical failures, said once, then the hint
    assert lines[0] == ("node 6 (LoadIPAdapter) input 'adapter_name': model file 'ip-adapter_sd15.safetensors' "
                        "is not on the server; put it in ComfyUI/models/ipadapter/  [every item]")
    assert lines[1].startswith("hint: after adding files press R") and "python -m ip_adapter.models" in lines[1]


def test_uploaded_images_are_not_checked_but_the_workflows_own_are(workflow, tmp_path) -> None:
    info = object_info(workflow, drop="reference.png")
    assert preflight.check(_grid(workflow, tmp_path, ["ip-adapter_sd15.safetensors"]), info) == []
    (only,) = prepare(planning.build_plan(workflow, [], [], None, tmp_path))
    with pytest.raises(preflight.PreflightError, match=r"node 4 \(LoadImage\) input 'image': 'reference.png' is not"):
        preflight.check([only], info)


def test_a_partly_wrong_grid_still_runs_and_the_wrong_items_are_named(workflow, tmp_path) -> None:
    prepared = _grid(workflow, tmp_path, ["ip-adapter_sd15.safetensors", "missing.safetensors"])
    predicted = preflight.check(prepared, object_info(workflow))
    assert len(predicted) == 6 and all("'missing.safetensors' is not on the server" in p[0] for _, p in predicted)


def test_a_node_class_the_server_lacks_is_named(workflow, tmp_path) -> None:
    info = object_info(workflow)
    del info["ApplyIPAdapter"]
    (only,) = prepare(planning.build_plan(workflow, [], [], None, tmp_path))
    with pytest.raises(preflight.PreflightError, match=r"node 8 \(ApplyIPAdapter\): this node is not installed"):
        preflight.check([only], info)


def test_the_summary_groups_identical_failures_with_a_hint(tmp_path) -> None:
    manifest = Manifest.load(tmp_path / "manifest.json")
    problem = "node 6 (LoadIPAdapter) input 'adapter_name': Value not in list: adapter_name: 'x' not in []"
    for i in range(4):
        manifest.record(f"k{i}", {"index": i, "status": FAILED, "outputs": [],
                                  "error": {"type": "validation", "problems": [problem]}})
    text = cli.report(manifest, {"done": 0, "items": 5, "failed": 4, "skipped": 0, "wall_s": 1.0},
                      ["k0", "k1", "k2", "k3", "k4"])
    assert text.count(problem) == 1 and "[items 0-3]" in text
    assert "hint: a model file is missing on the server" in text


def test_an_unreachable_server_gets_a_hint(tmp_path, monkeypatch, capsys) -> None:
    async def unreachable(*_args, **_kwargs):
        raise TransientError("GET http://127.0.0.1:9/system_stats failed 5 times; last: refused")

    monkeypatch.setattr(cli, "run", unreachable)
    status = cli.main([str(WORKFLOW), "--server", "127.0.0.1:9", "--out", str(tmp_path / "out")])
    assert status == 2
    err = capsys.readouterr().err
    assert "hint: is ComfyUI running there?" in err and "--cpu" in err
