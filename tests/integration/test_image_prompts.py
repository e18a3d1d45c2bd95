"""Several reference images, negative images, CLIP Vision Encode outputs and saved prompts, in real ComfyUI."""

from __future__ import annotations

import pytest
import torch
from support import checkpoints, unets
from support.comfy_clip import reference_features, tiny_comfy_clip_vision
from support.comfy_harness import run_node

VARIANTS = {"base": ("ip-adapter_sd15", "image_embeds"), "plus": ("ip-adapter-plus_sd15", "penultimate_hidden_states")}


@pytest.fixture(scope="module")
def clip_vision(comfy, tmp_path_factory):
    return tiny_comfy_clip_vision(tmp_path_factory.mktemp("clip"), hidden=1280, projection_dim=1024, seed=3)


@pytest.fixture(scope="module")
def sd15(comfy):
    return unets.comfy_sd15_model(seed=5)


def _adapter(model_dirs, kind: str):
    variant = VARIANTS[kind][0]
    path = checkpoints.save_safetensors(checkpoints.ip_adapter_state_dict(variant, "small", seed=7),
                                        model_dirs["ipadapter"] / f"{variant}.safetensors")
    return run_node("LoadIPAdapter", adapter_name=path.name)[0]


def _images(count: int, seed: int) -> torch.Tensor:
    return torch.rand(count, 80, 96, 3, generator=torch.Generator().manual_seed(seed))


def _encode(adapter, clip_vision, image, **extra):
    return run_node("EncodeImagePrompt", ip_adapter=adapter, clip_vision=clip_vision, image=image,
                    fit=extra.pop("fit", "center crop"), **extra)[0]


def _eps(model, adapter, prompt) -> torch.Tensor:
    (patched,) = run_node("ApplyIPAdapter", model=model, ip_adapter=adapter, image_prompt=prompt, weight=1.0,
                          start_percent=0.0, end_percent=1.0)
    g = torch.Generator().manual_seed(11)
    positive, negative = torch.randn(2, 1, 77, 768, generator=g)
    x = torch.randn(1, 4, 16, 16, generator=g)
    return unets.comfy_eps(patched, x, unets.sigma_for_timestep(patched, 500), positive, negative=negative, cfg=4.0)


def _project(adapter, features: torch.Tensor) -> torch.Tensor:
    """The adapter's tokens of `features`; one row repeated by `expand` (a shared uncond) is projected once."""
    with torch.inference_mode():
        if features.shape[0] > 1 and features.stride(0) == 0:
            return adapter.model.project(features[:1]).repeat(1, features.shape[0], 1)
        return adapter.model.project(features).reshape(1, -1, adapter.spec.cross_attention_dim)


@pytest.mark.parametrize("kind", ["base", "plus"])
def test_default_is_the_concatenated_projection_bit_for_bit(comfy, model_dirs, clip_vision, kind) -> None:
    adapter, image = _adapter(model_dirs, kind), _images(2, 1)
    cond, uncond = reference_features(clip_vision, image, VARIANTS[kind][1])
    default = _encode(adapter, clip_vision, image)
    explicit = _encode(adapter, clip_vision, image, combine_embeds="concat", image_weights="")
    for prompt in (default, explicit):
        assert torch.equal(prompt.cond, _project(adapter, cond))
        assert torch.equal(prompt.uncond, _project(adapter, uncond))
        assert prompt.tokens == 2 * adapter.spec.tokens


@pytest.mark.parametrize("kind", ["base", "plus"])
def test_combine_modes_combine_the_clip_features_before_projection(comfy, model_dirs, clip_vision, kind) -> None:
    adapter, image = _adapter(model_dirs, kind), _images(3, 2)
    x, uncond = reference_features(clip_vision, image, VARIANTS[kind][1])
    formulas = {  # ComfyUI_IPAdapter_plus's definitions, on the CLIP features
        "add": x.sum(0), "subtract": x[0] - x[1:].mean(0), "average": x.mean(0),
        "norm average": (x / torch.norm(x, dim=0, keepdim=True)).mean(0),
    }
    results = {}
    for mode, combined in formulas.items():
        prompt = _encode(adapter, clip_vision, image, combine_embeds=mode)
        assert prompt.tokens == adapter.spec.tokens, mode
        torch.testing.assert_close(prompt.cond, _project(adapter, combined.unsqueeze(0)), rtol=0, atol=1e-5)
        assert torch.equal(prompt.uncond, _project(adapter, uncond[:1])), mode
        results[mode] = prompt.cond
    for mode, cond in results.items():  # every mode gives its own prompt
        assert all((cond - other).abs().max() > 1e-4 for name, other in results.items() if name != mode), mode


def test_image_weights_scale_each_image_and_bad_lists_name_the_input(comfy, model_dirs, clip_vision) -> None:
    adapter, image = _adapter(model_dirs, "plus"), _images(2, 3)
    x, _ = reference_features(clip_vision, image, "penultimate_hidden_states")
    prompt = _encode(adapter, clip_vision, image, combine_embeds="average", image_weights="1.5, 0.25")
    expected = _project(adapter, ((1.5 * x[0] + 0.25 * x[1]) / 2).unsqueeze(0))
    torch.testing.assert_close(prompt.cond, expected, rtol=0, atol=1e-5)
    concat = _encode(adapter, clip_vision, image, image_weights="1, 0")
    assert torch.equal(concat.cond, _project(adapter, torch.stack([x[0], 0 * x[1]])))
    with pytest.raises(ValueError, match=r"EncodeImagePrompt 'image_weights': 3 weight\(s\) given for 2"):
        _encode(adapter, clip_vision, image, image_weights="1 1 1")
    with pytest.raises(ValueError, match=r"EncodeImagePrompt 'image_weights': item 2 'x2' is not a number"):
        _encode(adapter, clip_vision, image, image_weights="1, x2")


@pytest.mark.parametrize("kind", ["base", "plus"])
def test_negative_image_replaces_the_uncond_tokens_in_every_mode(comfy, model_dirs, clip_vision, sd15, kind) -> None:
    adapter, image, negatives = _adapter(model_dirs, kind), _images(2, 4), _images(2, 5)
    feature = VARIANTS[kind][1]
    neg, _ = reference_features(clip_vision, negatives, feature)
    concat = _encode(adapter, clip_vision, image, negative_image=negatives)
    assert torch.equal(concat.uncond, _project(adapter, neg))
    first, _ = reference_features(clip_vision, negatives[:1], feature)
    second, _ = reference_features(clip_vision, negatives[1:], feature)
    one = _encode(adapter, clip_vision, image, negative_image=negatives[:1])
    assert torch.equal(one.uncond, _project(adapter, first.expand(2, *neg.shape[1:])))
    average = _encode(adapter, clip_vision, image, negative_image=negatives, combine_embeds="average")
    torch.testing.assert_close(average.uncond, _project(adapter, neg.mean(0, keepdim=True)), rtol=0, atol=1e-5)
    subtract = _encode(adapter, clip_vision, image, negative_image=negatives[1:], combine_embeds="subtract")
    assert torch.equal(subtract.uncond, _project(adapter, second))
    plain = _encode(adapter, clip_vision, image, combine_embeds="subtract")
    assert torch.equal(subtract.cond, plain.cond) and not torch.equal(subtract.uncond, plain.uncond)
    # The negative acts on the model output (with CFG the uncond tokens matter).
    assert (_eps(sd15, adapter, subtract) - _eps(sd15, adapter, plain)).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"EncodeImagePrompt: 'negative_image' has 3 images; give 1 or as many"):
        _encode(adapter, clip_vision, image, negative_image=_images(3, 6))


@pytest.mark.parametrize("kind", ["base", "plus"])
@pytest.mark.parametrize("crop,fit", [("center", "center crop"), ("none", "stretch")])
def test_prompt_from_clip_vision_encode_equals_encode_image_prompt(comfy, model_dirs, clip_vision, kind, crop,
                                                                   fit) -> None:
    adapter, image, negatives = _adapter(model_dirs, kind), _images(2, 8), _images(1, 9)
    (encoded,) = run_node("CLIPVisionEncode", clip_vision=clip_vision, image=image, crop=crop)
    (negative,) = run_node("CLIPVisionEncode", clip_vision=clip_vision, image=negatives, crop=crop)
    cases = [({}, {}), ({"combine_embeds": "norm average", "image_weights": "1, 0.5"},
                        {"combine_embeds": "norm average", "image_weights": "1, 0.5"}),
             ({"negative": negative}, {"negative_image": negatives})]
    for ours, theirs in cases:
        (prompt,) = run_node("ImagePromptFromCLIPVision", ip_adapter=adapter, clip_vision_output=encoded,
                             clip_vision=clip_vision, **ours)
        reference = _encode(adapter, clip_vision, image, fit=fit, **theirs)
        assert torch.equal(prompt.cond, reference.cond) and torch.equal(prompt.uncond, reference.uncond)
        assert prompt.spec == reference.spec


def test_prompt_from_clip_vision_explains_the_missing_encoder_for_plus(comfy, model_dirs, clip_vision) -> None:
    (encoded,) = run_node("CLIPVisionEncode", clip_vision=clip_vision, image=_images(1, 1), crop="center")
    base = _adapter(model_dirs, "base")
    (prompt,) = run_node("ImagePromptFromCLIPVision", ip_adapter=base, clip_vision_output=encoded)
    assert torch.equal(prompt.uncond, _project(base, torch.zeros(1, 1024)))  # base: no clip_vision needed
    with pytest.raises(ValueError, match=r"ImagePromptFromCLIPVision: .*plus adapter.*zero pixels.*'clip_vision'"):
        run_node("ImagePromptFromCLIPVision", ip_adapter=_adapter(model_dirs, "plus"), clip_vision_output=encoded)
    wrong = tiny_comfy_clip_vision(model_dirs["clip_vision"], hidden=1664, projection_dim=1280)
    (bigg,) = run_node("CLIPVisionEncode", clip_vision=wrong, image=_images(1, 1), crop="center")
    with pytest.raises(ValueError, match=r"ImagePromptFromCLIPVision: .*ViT-H/14.*'clip_vision_output' gives width "
                                         r"1280.*CLIP-ViT-H-14"):
        run_node("ImagePromptFromCLIPVision", ip_adapter=base, clip_vision_output=bigg)


@pytest.mark.parametrize("kind", ["base", "plus"])
def test_a_saved_prompt_loads_back_and_applies_identically(comfy, model_dirs, clip_vision, sd15, kind) -> None:
    adapter = _adapter(model_dirs, kind)
    prompt = _encode(adapter, clip_vision, _images(2, 10), negative_image=_images(1, 11), combine_embeds="average")
    _, ui = run_node("SaveImagePrompt", return_ui=True, image_prompt=prompt, filename_prefix=f"styles/{kind}")
    (saved,) = ui["image_prompts"]
    assert saved["subfolder"] == "styles" and saved["filename"] == f"{kind}_00001_.image_prompt.safetensors"
    choice = f"styles/{saved['filename']} [output]"
    options = comfy.node_class("LoadImagePrompt").INPUT_TYPES()["required"]["prompt_file"][1]["options"]
    assert choice in options  # listed right away, no copying needed
    (loaded,) = run_node("LoadImagePrompt", prompt_file=choice)
    assert torch.equal(loaded.cond, prompt.cond) and torch.equal(loaded.uncond, prompt.uncond)
    assert loaded.spec == prompt.spec
    assert torch.equal(_eps(sd15, adapter, loaded), _eps(sd15, adapter, prompt))


def test_load_image_prompt_lists_the_input_folder_and_refuses_other_files(comfy, model_dirs, clip_vision) -> None:
    input_dir = comfy.folder_paths.get_input_directory()
    adapter = _adapter(model_dirs, "base")
    prompt = _encode(adapter, clip_vision, _images(1, 12))
    run_node("SaveImagePrompt", image_prompt=prompt, filename_prefix="copied")
    output_dir = comfy.folder_paths.get_output_directory()
    import shutil

    shutil.copy(f"{output_dir}/copied_00001_.image_prompt.safetensors", f"{input_dir}/style.image_prompt.safetensors")
    with open(f"{input_dir}/broken.image_prompt.safetensors", "wb") as handle:
        handle.write(b"not a safetensors file")
    options = comfy.node_class("LoadImagePrompt").INPUT_TYPES()["required"]["prompt_file"][1]["options"]
    assert {"style.image_prompt.safetensors", "broken.image_prompt.safetensors"} <= set(options)
    (loaded,) = run_node("LoadImagePrompt", prompt_file="style.image_prompt.safetensors")
    assert torch.equal(loaded.cond, prompt.cond)
    with pytest.raises(ValueError, match=r"Could not read image prompt 'broken\.image_prompt\.safetensors'"):
        run_node("LoadImagePrompt", prompt_file="broken.image_prompt.safetensors")
    with pytest.raises(ValueError, match=r"LoadImagePrompt: '\.\./x\.image_prompt\.safetensors' is outside"):
        run_node("LoadImagePrompt", prompt_file="../x.image_prompt.safetensors")


def test_prompts_without_the_new_inputs_still_validate_and_saved_prompts_run_through_the_executor(
        comfy, model_dirs, clip_vision) -> None:
    from PIL import Image
    from support.comfy_prompts import PromptRunner

    adapter = _adapter(model_dirs, "base")
    (model_dirs["clip_vision"] / "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors").write_bytes(b"")
    Image.new("RGB", (32, 32)).save(f"{comfy.folder_paths.get_input_directory()}/reference.png")
    old = {  # an API prompt saved before combine_embeds / image_weights existed
        "1": {"class_type": "LoadIPAdapter", "inputs": {"adapter_name": "ip-adapter_sd15.safetensors"}},
        "2": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "reference.png"}},
        "4": {"class_type": "EncodeImagePrompt", "inputs": {"ip_adapter": ["1", 0], "clip_vision": ["2", 0],
                                                           "image": ["3", 0], "fit": "center crop"}},
        "5": {"class_type": "SaveImagePrompt", "inputs": {"image_prompt": ["4", 0], "filename_prefix": "x"}},
    }
    runner = PromptRunner()
    assert runner.validate(old) == ["5"]

    prompt = _encode(adapter, clip_vision, _images(1, 13))
    run_node("SaveImagePrompt", image_prompt=prompt, filename_prefix="executor/first")
    copy = {
        "1": {"class_type": "LoadImagePrompt", "inputs": {"prompt_file": "executor/first_00001_.image_prompt.safetensors [output]"}},
        "2": {"class_type": "SaveImagePrompt", "inputs": {"image_prompt": ["1", 0], "filename_prefix": "executor/second"}},
    }
    result = runner.run(copy)
    assert result.executed == ["1", "2"]
    (loaded,) = run_node("LoadImagePrompt", prompt_file="executor/second_00001_.image_prompt.safetensors [output]")
    assert torch.equal(loaded.cond, prompt.cond) and torch.equal(loaded.uncond, prompt.uncond)
    assert runner.run(copy).cached == ["1", "2"]  # unchanged file: served from the cache
    with pytest.raises(Exception, match="prompt_file"):
        runner.validate({"1": {"class_type": "LoadImagePrompt", "inputs": {"prompt_file": "../../etc/passwd"}},
                         "2": copy["2"]})
