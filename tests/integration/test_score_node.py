"""LoadCLIPScorer and ScoreImagePrompt inside a real ComfyUI (CPU, tiny random OpenCLIP models).

The nodes are reached through the pack as ComfyUI imported it (`<pack module>.nodes.score`),
so the test does not depend on `nodes/__init__.py` registering them; the prompt-level test
runs once they are registered and skips until then.
"""

from __future__ import annotations

import importlib
import json
import math

import pytest
import torch
from support import openclip_checkpoints as oc
from support.comfy_harness import run_node
from support.comfy_prompts import run_prompt

FOLDER = "clip_scoring"


@pytest.fixture(scope="module")
def score(pack):
    """The pack's `nodes.score` module, imported under ComfyUI's name for the pack."""
    return importlib.import_module(f"{pack.module.__name__}.nodes.score")


@pytest.fixture
def scoring_dir(comfy, tmp_path):
    """A temporary models/clip_scoring, first in folder_paths, holding a tiny model + its config."""
    fp = comfy.folder_paths
    path = tmp_path / FOLDER
    path.mkdir()
    fp.add_model_folder_path(FOLDER, str(path), is_default=True)
    fp.filename_list_cache.pop(FOLDER, None)
    oc.write_tiny(path / "tiny.safetensors", seed=21)
    (path / "tiny.json").write_text(json.dumps({"model_cfg": oc.TINY_CONFIG}))
    yield path
    entry = fp.folder_names_and_paths.get(FOLDER)
    if entry is not None and str(path) in entry[0]:
        entry[0].remove(str(path))
    fp.filename_list_cache.pop(FOLDER, None)


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 40, 56, 3, generator=torch.Generator().manual_seed(seed))


def _load(score, name: str = "tiny.safetensors", **kwargs):
    (loaded,) = run_node(score.LoadCLIPScorer, model_name=name, activation=kwargs.get("activation", "auto"),
                         precision=kwargs.get("precision", "auto"))
    return loaded


def test_schema_types_tooltips_and_folder(comfy, score) -> None:
    fp = comfy.folder_paths
    assert [n.__name__ for n in score.SCORING_NODES] == ["LoadCLIPScorer", "ScoreImagePrompt"]
    for node in score.SCORING_NODES:
        schema = node.define_schema()
        assert schema.node_id not in comfy.builtin_node_ids
        assert all(i.tooltip for i in schema.inputs), schema.node_id
    assert score.LoadCLIPScorer.define_schema().outputs[0].io_type == "IP_ADAPTER_CLIP_SCORER"
    outputs = [o.io_type for o in score.ScoreImagePrompt.define_schema().outputs]
    assert outputs == ["FLOAT", "FLOAT", "STRING", "STRING", "IMAGE"]
    paths, extensions = fp.folder_names_and_paths[FOLDER]
    assert any(p.endswith((f"models/{FOLDER}", f"models\\{FOLDER}")) for p in paths)
    assert {".safetensors", ".bin"} <= extensions


def test_load_and_score(comfy, score, scoring_dir) -> None:
    loaded = _load(score)
    assert loaded.scorer.architecture.name == "tiny" and not loaded.scorer.quick_gelu
    assert loaded.scorer.model.visual.conv1.weight.dtype == torch.float32  # "auto" on CPU
    assert type(loaded.patcher).__name__ == "ModelPatcher"

    images, reference = _images(3), _images(1, seed=5)
    images[1] = reference[0]
    outputs, ui = run_node(score.ScoreImagePrompt, return_ui=True, clip_scorer=loaded, images=images,
                           reference=reference, text="a photo of a dog", pairing="mean over references")
    clip_i_mean, clip_t_mean, scores_json, table, plot = outputs
    data = json.loads(scores_json)
    assert len(data["rows"]) == 3 and data["architecture"] == "tiny" and data["text"] == "a photo of a dog"
    assert abs(data["rows"][1]["clip_i"] - 1.0) < 1e-5  # the reference itself
    assert clip_i_mean == pytest.approx(sum(r["clip_i"] for r in data["rows"]) / 3, abs=1e-6)
    assert clip_t_mean == pytest.approx(sum(r["clip_t"] for r in data["rows"]) / 3, abs=1e-6)

    direct = loaded.scorer.score(images, reference, "a photo of a dog")  # the core, without the node
    assert [r["clip_i"] for r in data["rows"]] == pytest.approx(direct.clip_i.tolist(), abs=1e-6)
    assert "CLIP-I" in table and "mean" in table and table in ui["text"]
    assert plot.shape == (1, 270, 480, 3) and plot.dtype == torch.float32 and 0.0 <= plot.min() <= plot.max() <= 1.0


def test_without_text_clip_t_is_nan_and_pairing_one_to_one(score, scoring_dir) -> None:
    loaded = _load(score)
    images = _images(2, seed=1)
    clip_i_mean, clip_t_mean, scores_json, _, _ = run_node(score.ScoreImagePrompt, clip_scorer=loaded, images=images,
                                                           reference=images, pairing="one to one")
    assert math.isnan(clip_t_mean) and json.loads(scores_json)["mean"]["clip_t"] is None
    assert clip_i_mean == pytest.approx(1.0, abs=1e-5)


def test_clear_errors(score, scoring_dir) -> None:
    sd = oc.tiny_model().state_dict()
    vision_only = {k: v for k, v in sd.items() if k.startswith("visual.")}
    oc.write_checkpoint(vision_only, scoring_dir / "vision_only.safetensors")
    (scoring_dir / "vision_only.json").write_text(json.dumps(oc.TINY_CONFIG))
    with pytest.raises(ValueError, match="'vision_only.safetensors' has no text tower: missing token_embedding"):
        _load(score, "vision_only.safetensors")

    loaded = _load(score)
    with pytest.raises(ValueError, match="'images' is an empty image batch"):
        run_node(score.ScoreImagePrompt, clip_scorer=loaded, images=torch.zeros(0, 8, 8, 3), reference=_images(1))
    with pytest.raises(ValueError, match="'one to one' pairing needs 1 reference or one per image"):
        run_node(score.ScoreImagePrompt, clip_scorer=loaded, images=_images(3), reference=_images(2),
                 pairing="one to one")


def test_prompt_runs_through_the_executor(pack, scoring_dir) -> None:
    if "ScoreImagePrompt" not in pack or "LoadCLIPScorer" not in pack:
        pytest.skip("LoadCLIPScorer / ScoreImagePrompt are not registered in nodes/__init__.py yet")
    prompt = {
        "1": {"class_type": "LoadCLIPScorer",
              "inputs": {"model_name": "tiny.safetensors", "activation": "auto", "precision": "auto"}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 2, "color": 255}},
        "3": {"class_type": "ScoreImagePrompt",
              "inputs": {"clip_scorer": ["1", 0], "images": ["2", 0], "reference": ["2", 0], "text": "a photo",
                         "pairing": "mean over references"}},
    }
    result = run_prompt(prompt)
    assert result.output("3", 0) == pytest.approx(1.0, abs=1e-5)
    assert "3" in result.ui and "text" in result.ui["3"]
