"""Through ComfyUI's real executor: changing only weight or schedule never re-runs the CLIP encoder."""

from __future__ import annotations

import pytest
import torch
from support import checkpoints, unets
from support.comfy_clip import tiny_comfy_clip_vision
from support.comfy_prompts import PromptRunner
from support.value_nodes import ValueNodes


@pytest.fixture
def tower_calls(comfy, tmp_path):
    """Registers the in-memory model/CLIP vision/image nodes; yields the list of CLIP tower forwards.

    Counted with a forward hook on the tower module, so every way into it counts: the image
    encode (`encode_image`) and the plus adapters' zero-pixel uncond encode alike.
    """
    clip_vision = tiny_comfy_clip_vision(tmp_path, hidden=1280, projection_dim=1024)
    calls: list[int] = []
    handle = clip_vision.model.register_forward_hook(lambda *_: calls.append(1))
    with ValueNodes(comfy, {"IPATestModel": ("MODEL", unets.comfy_sd15_model(seed=1)),
                      "IPATestClipVision": ("CLIP_VISION", clip_vision),
                      "IPATestImage": ("IMAGE", torch.rand(1, 64, 64, 3))}):
        yield calls
    handle.remove()


def _prompt(adapter_name: str, weight: float, end: float) -> dict:
    return {
        "1": {"class_type": "IPATestModel", "inputs": {}},
        "2": {"class_type": "IPATestClipVision", "inputs": {}},
        "3": {"class_type": "IPATestImage", "inputs": {}},
        "4": {"class_type": "LoadIPAdapter", "inputs": {"adapter_name": adapter_name}},
        "5": {"class_type": "EncodeImagePrompt",
              "inputs": {"ip_adapter": ["4", 0], "clip_vision": ["2", 0], "image": ["3", 0], "fit": "center crop"}},
        "6": {"class_type": "ApplyIPAdapter",
              "inputs": {"model": ["1", 0], "ip_adapter": ["4", 0], "image_prompt": ["5", 0], "weight": weight,
                         "start_percent": 0.0, "end_percent": end}},
    }


# base: one tower call (uncond = zero image_embeds); plus: two (the image, then zero pixels).
@pytest.mark.parametrize("variant,first_calls", [("ip-adapter_sd15", 1), ("ip-adapter-plus_sd15", 2)])
def test_weight_and_schedule_changes_reuse_the_encoding(comfy, model_dirs, tower_calls, variant,
                                                        first_calls) -> None:
    path = checkpoints.save_safetensors(checkpoints.ip_adapter_state_dict(variant, "small"),
                                        model_dirs["ipadapter"] / f"cache-{variant}.safetensors")
    runner = PromptRunner()
    first = runner.run(_prompt(path.name, 1.0, 1.0), targets=["6"])
    assert "5" in first.executed and len(tower_calls) == first_calls
    for weight, end in ((0.4, 1.0), (0.4, 0.5), (1.7, 0.8)):
        result = runner.run(_prompt(path.name, weight, end), targets=["6"])
        assert result.executed == ["6"], result.executed
        assert "5" in result.cached
    assert len(tower_calls) == first_calls  # the CLIP vision tower did not run again for 3 re-queued prompts
    runner.run(_prompt(path.name, 0.4, 0.5), targets=["6"])
    assert len(tower_calls) == first_calls


def test_out_of_range_weight_is_rejected_by_validation(comfy, model_dirs, tower_calls) -> None:
    path = checkpoints.save_safetensors(checkpoints.ip_adapter_state_dict("ip-adapter_sd15"),
                                        model_dirs["ipadapter"] / "range.safetensors")
    with pytest.raises(Exception, match="weight"):
        PromptRunner().run(_prompt(path.name, 7.5, 1.0), targets=["6"])
    assert tower_calls == []
