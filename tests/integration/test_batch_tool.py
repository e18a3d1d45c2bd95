"""The batch tool against a real ComfyUI server: outputs, resume, a failing item, scores.

Runs `python -m comfy_batch` as users do (a subprocess from the pack's folder) against the
`comfy_server` fixture (real `main.py`, this pack, tiny random-weight models) with the shipped
`workflows/api/sd15_image_prompt.json`, adapted to the tiny models by
`support.comfy_server.tiny_workflow` (64 px, 1 step, the test CLIP vision loader).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import comfy_server as server_support
from support import openclip_checkpoints
from support.comfy_harness import REPO_ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def batch_dir(tmp_path_factory) -> Path:
    """A tiny workflow, two different reference images and a tiny OpenCLIP scoring model."""
    folder = tmp_path_factory.mktemp("batch")
    workflow = json.loads((REPO_ROOT / "workflows/api/sd15_image_prompt.json").read_text())
    (folder / "workflow.json").write_text(json.dumps(server_support.tiny_workflow(workflow), indent=1))
    refs = folder / "refs"
    refs.mkdir()
    yy, xx = np.mgrid[0:64, 0:64]
    Image.fromarray(np.stack([xx * 4, yy * 4, 255 - xx * 4], -1).astype(np.uint8)).save(refs / "gradient.png")
    Image.fromarray(((xx // 8 + yy // 8) % 2 * 255)[..., None].repeat(3, -1).astype(np.uint8)).save(refs / "checker.png")
    openclip_checkpoints.write_tiny(folder / "tiny_openclip.safetensors")
    # the model's open_clip config kept beside it, as the scoring README says
    (folder / "tiny_openclip.json").write_text(json.dumps({"model_cfg": openclip_checkpoints.TINY_CONFIG}))
    return folder


def run_batch(server, folder: Path, *args: str, timeout: float = 400) -> tuple[subprocess.CompletedProcess, dict, float]:
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "comfy_batch", str(folder / "workflow.json"), "--server", server.address,
         "--no-progress", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    wall = time.monotonic() - start
    out = Path(args[args.index("--out") + 1])
    manifest = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").exists() else {}
    return result, manifest, wall


def _history_size(server) -> int:
    return len(server.get_json("/history?max_items=10000"))


def test_two_references_give_two_different_images_then_resume_runs_nothing(comfy_server, batch_dir) -> None:
    out = batch_dir / "out"
    args = ("--images", str(batch_dir / "refs"), "--seeds", "5", "--set", "ApplyIPAdapter.weight=3", "--out", str(out),
            "--score-model", str(batch_dir / "tiny_openclip.safetensors"), "--score-text", "a photo")
    result, manifest, wall = run_batch(comfy_server, batch_dir, *args)
    print(f"\nbatch of 2 items on the real server: {wall:.1f} s wall")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2/2 done, 0 failed, 0 skipped" in result.stdout
    records = sorted(manifest["items"].values(), key=lambda r: r["index"])
    assert [Path(r["inputs"]["4.image"]).name for r in records] == ["checker.png", "gradient.png"]
    images = []
    for record in records:
        assert record["status"] == "done" and record["error"] is None
        (output,) = record["outputs"]
        images.append(np.asarray(Image.open(out / output["path"])).astype(np.int16))
        assert set(record["timings"]) == {"upload_s", "queue_s", "run_s", "download_s", "total_s"}
        scores = record["scores"]
        assert scores["text"] == "a photo" and scores["reference"] == [record["inputs"]["4.image"]]
        (image_scores,) = scores["images"].values()
        assert -1.0 <= image_scores["clip_i"] <= 1.0 and 0.0 <= image_scores["clip_t"] <= 2.5
    assert images[0].shape == (64, 64, 3)
    difference = np.abs(images[0] - images[1]).mean()
    print(f"mean |difference| between the two outputs: {difference:.2f} grey levels")
    assert difference > 1.0, "the reference image must change the output"

    history = _history_size(comfy_server)
    again, manifest2, _ = run_batch(comfy_server, batch_dir, *args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2/2 done, 0 failed, 2 skipped" in again.stdout
    assert _history_size(comfy_server) == history, "a resumed batch must not queue finished items"
    assert {k: r["prompt_id"] for k, r in manifest2["items"].items()} == {
        k: r["prompt_id"] for k, r in manifest["items"].items()}


def test_invalid_item_fails_readably_and_the_rest_still_runs(comfy_server, batch_dir) -> None:
    out = batch_dir / "out_bad"
    result, manifest, _ = run_batch(
        comfy_server, batch_dir, "--images", str(batch_dir / "refs"), "--seeds", "5", "--out", str(out),
        "--grid", "Load IP-Adapter.adapter_name=missing_adapter.safetensors,ip-adapter_sd15.safetensors")
    assert result.returncode == 1, result.stdout + result.stderr
    records = list(manifest["items"].values())
    failed = [r for r in records if r["status"] == "failed"]
    assert len(failed) == 2 and len(records) == 4
    error = failed[0]["error"]
    assert error["type"] == "validation"
    assert any(p.startswith("node 6 (LoadIPAdapter) input 'adapter_name': Value not in list")
               and "missing_adapter.safetensors" in p for p in error["problems"]), error
    assert "2/4 done, 2 failed" in result.stdout
    assert "node 6 (LoadIPAdapter) input 'adapter_name'" in result.stdout


def test_a_model_missing_for_every_item_stops_before_any_upload(comfy_server, batch_dir) -> None:
    """Preflight: the whole grid would be refused, so nothing is uploaded or queued; one line per problem."""
    out = batch_dir / "out_preflight"
    inputs_before = sorted(p.name for p in comfy_server.folder("input").iterdir())
    history_before = _history_size(comfy_server)
    result, manifest, _ = run_batch(
        comfy_server, batch_dir, "--images", str(batch_dir / "refs"), "--seeds", "1-3", "--out", str(out),
        "--set", "Load IP-Adapter.adapter_name=not_downloaded.safetensors")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "nothing was uploaded or queued" in result.stderr
    problem = ("node 6 (LoadIPAdapter) input 'adapter_name': model file 'not_downloaded.safetensors' is not on "
               "the server; put it in ComfyUI/models/ipadapter/  [every item]")
    assert result.stderr.count(problem) == 1, result.stderr
    assert sorted(p.name for p in comfy_server.folder("input").iterdir()) == inputs_before
    assert _history_size(comfy_server) == history_before and not manifest.get("items")
