"""The batch tool's pure parts: addresses, value types, grids and lists, item ids, the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ipadapter_pack.comfy_batch import cli
from ipadapter_pack.comfy_batch import plan as planning
from ipadapter_pack.comfy_batch.client import ValidationError
from ipadapter_pack.comfy_batch.manifest import DONE, FAILED, Manifest
from ipadapter_pack.comfy_batch.runner import prepare
from support.pack import REPO_ROOT

WORKFLOW = REPO_ROOT / "workflows" / "api" / "sd15_image_prompt.json"


@pytest.fixture
def workflow() -> dict:
    return planning.load_workflow(WORKFLOW)


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "refs"
    folder.mkdir()
    for name, content in (("b.png", b"bbb"), ("a.png", b"aaa"), ("notes.txt", b"x")):
        (folder / name).write_bytes(content)
    return folder


def test_addresses_by_id_title_and_class(workflow) -> None:
    assert planning.resolve(workflow, "10.seed").node_id == "10"
    assert planning.resolve(workflow, "Positive.text").node_id == "2"
    assert planning.resolve(workflow, "KSampler.cfg").node_id == "10"
    assert planning.resolve(workflow, "Reference image.image").is_image


@pytest.mark.parametrize("address, message", [
    ("CLIPTextEncode.text", r"matches nodes 2, 3; use the node id"),
    ("Positive.txt", r"node 2 \(CLIPTextEncode\) has no input 'txt'; inputs: text, clip"),
    ("8.model", r"linked to node 1; only widget values"),
    ("Nope.seed", r"no node with id, title or class 'Nope'"),
    ("seed", r"expected NODE.INPUT"),
])
def test_bad_addresses_say_what_to_do(workflow, address, message) -> None:
    with pytest.raises(planning.PlanError, match=message):
        planning.resolve(workflow, address)


def test_values_take_the_workflow_type(workflow) -> None:
    plan = planning.build_plan(workflow, axes=[("KSampler.seed", ["7"]), ("8.weight", ["1"])],
                               fixed=[("Positive.text", "a cat")])
    values = {t.address: v for t, v in plan.items[0].values}
    assert values == {"KSampler.seed": 7, "8.weight": 1.0, "Positive.text": "a cat"}
    assert isinstance(values["8.weight"], float)
    with pytest.raises(planning.PlanError, match=r"node 10 \(KSampler\) input 'seed': 'x' is not a int"):
        planning.build_plan(workflow, axes=[("KSampler.seed", ["x"])])


def test_grid_is_cartesian_and_images_upload_by_content(workflow, images) -> None:
    args = cli.parse_args([str(WORKFLOW), "--images", str(images), "--seeds", "1-3", "--weights", "0.5,1"])
    plan = cli.build(args)
    assert len(plan.items) == 2 * 3 * 2
    first = plan.items[0].inputs()
    assert first == {"4.image": str(images / "a.png"), "10.seed": 1, "8.weight": 0.5}
    prepared = prepare(plan)
    assert len({p.id for p in prepared}) == 12
    name = prepared[0].prompt["4"]["inputs"]["image"]
    assert name.startswith("a_") and name.endswith(".png")
    assert plan.workflow["4"]["inputs"]["image"] == "reference.png"  # the workflow itself is untouched


def test_item_ids_are_stable_and_follow_image_content(workflow, images) -> None:
    args = cli.parse_args([str(WORKFLOW), "--images", str(images)])
    ids = [p.id for p in prepare(cli.build(args))]
    assert ids == [p.id for p in prepare(cli.build(args))]
    (images / "a.png").write_bytes(b"changed")
    changed = [p.id for p in prepare(cli.build(args))]
    assert changed[0] != ids[0] and changed[1] == ids[1]


def test_identical_items_run_once(workflow) -> None:
    plan = planning.build_plan(workflow, axes=[("KSampler.seed", ["1", "1"])])
    assert len(plan.items) == 2 and len(prepare(plan)) == 1


def test_csv_and_jsonl_lists(workflow, images, tmp_path) -> None:
    csv_file = images / "items.csv"
    csv_file.write_text('"Reference image.image",KSampler.seed,Positive.text\na.png,5,"a dog, running"\nb.png,6,x\n')
    plan = planning.build_plan(workflow, rows=planning.read_rows(csv_file), rows_dir=images)
    assert plan.items[0].inputs() == {
        "Reference image.image": str(images / "a.png"), "KSampler.seed": 5, "Positive.text": "a dog, running"}
    jsonl = tmp_path / "items.jsonl"
    jsonl.write_text(json.dumps({"8.weight": 0.3}) + "\n\n" + json.dumps({"8.weight": 0.9}) + "\n")
    plan = planning.build_plan(workflow, axes=[("KSampler.seed", ["1", "2"])], rows=planning.read_rows(jsonl))
    assert [(i.inputs()["8.weight"], i.inputs()["KSampler.seed"]) for i in plan.items] == [
        (0.3, 1), (0.3, 2), (0.9, 1), (0.9, 2)]
    (tmp_path / "bad.csv").write_text('"Reference image.image"\nmissing.png\n')
    with pytest.raises(planning.PlanError, match="image file .*missing.png not found"):
        planning.build_plan(workflow, rows=planning.read_rows(tmp_path / "bad.csv"), rows_dir=tmp_path)


def test_same_input_twice_is_refused(workflow) -> None:
    with pytest.raises(planning.PlanError, match=r"node 10 \(KSampler\) input 'seed' is set twice"):
        planning.build_plan(workflow, axes=[("10.seed", ["1"])], fixed=[("KSampler.seed", "2")])


def test_ui_format_is_refused_with_the_fix(tmp_path) -> None:
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"nodes": [], "links": []}))
    with pytest.raises(planning.PlanError, match=r"UI-format workflow; export it with 'Export \(API\)'"):
        planning.load_workflow(ui)


def test_validation_errors_read_per_node_and_input() -> None:
    body = {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation"},
            "node_errors": {"6": {"class_type": "LoadIPAdapter", "dependent_outputs": ["12"], "errors": [
                {"type": "value_not_in_list", "message": "Value not in list",
                 "details": "adapter_name: 'nope.safetensors' not in ['ip-adapter_sd15.safetensors']",
                 "extra_info": {"input_name": "adapter_name"}}]}}}
    error = ValidationError(body)
    expected = ("node 6 (LoadIPAdapter) input 'adapter_name': Value not in list: "
                "adapter_name: 'nope.safetensors' not in ['ip-adapter_sd15.safetensors']")
    assert error.problems == [expected]
    assert error.details()["type"] == "validation"


def test_manifest_resume_rules(tmp_path) -> None:
    manifest = Manifest.load(tmp_path / "m.json")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x.png").write_bytes(b"png")
    manifest.record("a", {"index": 0, "status": DONE, "outputs": [{"path": "out/x.png"}]})
    manifest.record("b", {"index": 1, "status": FAILED, "outputs": []})
    manifest.record("c", {"index": 2, "status": DONE, "outputs": [{"path": "out/gone.png"}]})
    again = Manifest.load(tmp_path / "m.json")
    assert [again.is_done(k) for k in "abcd"] == [True, False, False, False]
    summary = again.summarize(["a", "b", "c", "d"], skipped=1, wall_s=2.0)
    assert summary == {"items": 4, "done": 2, "failed": 1, "not_run": 1, "skipped": 1, "wall_s": 2.0}
    (tmp_path / "m.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        Manifest.load(tmp_path / "m.json")


def test_the_tool_runs_without_torch(images) -> None:
    """Without --score-model the tool never imports torch (here: importing it would fail)."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None; from comfy_batch import cli; "
            f"sys.exit(cli.main([{str(WORKFLOW)!r}, '--images', {str(images)!r}, '--seeds', '1,2', '--dry-run']))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 4
