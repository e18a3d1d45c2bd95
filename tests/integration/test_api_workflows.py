"""The shipped API-format workflows pass ComfyUI's own prompt validation (what POST /prompt runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from support.comfy_harness import REPO_ROOT
from support.comfy_prompts import PromptRunner

API_WORKFLOWS = sorted((REPO_ROOT / "workflows" / "api").glob("*.json"))
FILE_INPUTS = {  # widget -> model folder whose file list it is validated against
    "ckpt_name": "checkpoints", "clip_name": "clip_vision", "adapter_name": "ipadapter",
    "control_net_name": "controlnet",
}


def test_there_are_api_workflows() -> None:
    assert API_WORKFLOWS, "workflows/api/ is empty"


@pytest.mark.parametrize("path", API_WORKFLOWS, ids=lambda p: p.stem)
def test_api_workflow_validates(comfy, model_dirs, tmp_path, path: Path) -> None:
    prompt = json.loads(path.read_text())
    comfy.load_builtin_extras()  # comfy_extras nodes such as Canny, as a server registers them at start
    fp = comfy.folder_paths
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    fp.add_model_folder_path("checkpoints", str(checkpoints), is_default=True)
    folders = {**model_dirs, "checkpoints": checkpoints}
    try:
        for node in prompt.values():
            for name, value in node["inputs"].items():
                if name in FILE_INPUTS:  # the published file names; empty files satisfy validation
                    (folders[FILE_INPUTS[name]] / value).write_bytes(b"")
                if node["class_type"] == "LoadImage" and name == "image":
                    Image.new("RGB", (64, 64)).save(Path(fp.get_input_directory()) / value)
        for name in folders:
            fp.filename_list_cache.pop(name, None)
        outputs = PromptRunner().validate(prompt)
        assert outputs  # at least one output node would run
    finally:
        fp.folder_names_and_paths["checkpoints"][0].remove(str(checkpoints))
        fp.filename_list_cache.pop("checkpoints", None)
