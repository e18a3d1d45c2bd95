"""Combine modes and per-image weights (as ComfyUI_IPAdapter_plus defines them); prompt files."""

from __future__ import annotations

import json

import pytest
import torch
from ipadapter_pack.ip_adapter.combine import (
    CombineMode,
    apply_image_weights,
    combine_features,
    image_prompt_from_features,
    parse_image_weights,
)
from ipadapter_pack.ip_adapter.errors import ImagePromptError
from ipadapter_pack.ip_adapter.model import IPAdapterModel
from ipadapter_pack.ip_adapter.prompt import ImagePrompt, concat_images
from ipadapter_pack.ip_adapter.prompt_file import (
    load_image_prompt,
    save_image_prompt,
    spec_to_json,
)
from safetensors.torch import load_file, save_file
from support import checkpoints

WHERE = "EncodeImagePrompt 'image_weights'"


@pytest.fixture(scope="module")
def base_adapter() -> IPAdapterModel:
    return IPAdapterModel.from_state_dict(checkpoints.ip_adapter_state_dict("ip-adapter_sd15", "small", seed=1))


@pytest.fixture(scope="module")
def plus_adapter() -> IPAdapterModel:
    return IPAdapterModel.from_state_dict(checkpoints.ip_adapter_state_dict("ip-adapter-plus_sd15", "small", seed=2))


def _features(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", [(3, 1024), (3, 257, 1280)])
def test_each_mode_is_the_incumbents_formula(shape) -> None:
    x = _features(*shape)
    expected = {
        "concat": x,
        "add": torch.sum(x, dim=0).unsqueeze(0),
        "subtract": (x[0] - torch.mean(x[1:], dim=0)).unsqueeze(0),
        "average": torch.mean(x, dim=0).unsqueeze(0),
        "norm average": torch.mean(x / torch.norm(x, dim=0, keepdim=True), dim=0).unsqueeze(0),
    }
    for mode, value in expected.items():
        torch.testing.assert_close(combine_features(x, CombineMode(mode)), value, rtol=0, atol=1e-6, msg=mode)
    assert combine_features(x, CombineMode.CONCAT) is x


def test_one_image_is_unchanged_by_every_mode() -> None:
    x = _features(1, 1024)
    for mode in CombineMode:
        assert torch.equal(combine_features(x, mode), x), mode


def test_norm_average_of_an_all_zero_element_is_zero_not_nan() -> None:
    x = _features(2, 8)
    x[:, 3] = 0
    out = combine_features(x, CombineMode.NORM_AVERAGE)
    assert torch.isfinite(out).all() and out[0, 3] == 0


def test_weight_list_parsing_and_its_errors() -> None:
    assert parse_image_weights("", 3, WHERE) is None
    assert parse_image_weights("  ", 2, WHERE) is None
    assert parse_image_weights("1, 0.5;2\n-1", 4, WHERE) == (1.0, 0.5, 2.0, -1.0)
    with pytest.raises(ImagePromptError, match=r"EncodeImagePrompt 'image_weights': 2 weight\(s\) given for 3"):
        parse_image_weights("1, 2", 3, WHERE)
    with pytest.raises(ImagePromptError, match=r"'image_weights': item 2 'abc' is not a number.*'1\.0, 0\.5'"):
        parse_image_weights("1, abc", 2, WHERE)
    with pytest.raises(ImagePromptError, match=r"'image_weights': item 1 'nan' is not a finite number"):
        parse_image_weights("nan", 1, WHERE)


def test_weights_scale_each_images_features_before_combining() -> None:
    x = _features(2, 257, 16)
    weighted = apply_image_weights(x, (2.0, 0.5))
    assert torch.equal(weighted[0], x[0] * 2.0) and torch.equal(weighted[1], x[1] * 0.5)
    assert apply_image_weights(x, None) is x


def test_concat_without_weights_is_the_plain_projection_bit_for_bit(base_adapter, plus_adapter) -> None:
    for adapter, shape in ((base_adapter, (3, 1024)), (plus_adapter, (3, 257, 1280))):
        cond, uncond = _features(*shape, seed=1), _features(1, *shape[1:], seed=2)
        prompt = image_prompt_from_features(adapter, cond, uncond, CombineMode.CONCAT, None)
        assert torch.equal(prompt.cond, concat_images(adapter.project(cond)))
        # The shared uncond row is projected once and repeated (not projected 3 times).
        assert torch.equal(prompt.uncond, concat_images(adapter.project(uncond).repeat(3, 1, 1)))
        torch.testing.assert_close(prompt.uncond, concat_images(adapter.project(uncond.expand(3, *shape[1:]))),
                                   rtol=0, atol=1e-5)
        assert prompt.tokens == 3 * adapter.spec.tokens


def test_reducing_modes_project_one_combined_row_and_average_negatives(plus_adapter) -> None:
    cond, negatives = _features(3, 257, 1280, seed=3), _features(3, 257, 1280, seed=4)
    prompt = image_prompt_from_features(plus_adapter, cond, negatives, CombineMode.AVERAGE, (1.0, 2.0, 0.5))
    weighted = cond * torch.tensor([1.0, 2.0, 0.5]).view(3, 1, 1)
    assert torch.equal(prompt.cond, plus_adapter.project(weighted.mean(0, keepdim=True)))
    assert torch.equal(prompt.uncond, plus_adapter.project(negatives.mean(0, keepdim=True)))
    one = image_prompt_from_features(plus_adapter, cond, negatives[:1], CombineMode.SUBTRACT, None)
    assert torch.equal(one.uncond, plus_adapter.project(negatives[:1]))  # a single negative: used as is
    assert one.tokens == 16


def test_prompt_file_round_trip_is_exact(tmp_path, plus_adapter) -> None:
    prompt = image_prompt_from_features(plus_adapter, _features(2, 257, 1280), _features(1, 257, 1280, seed=5),
                                        CombineMode.CONCAT, None)
    path = tmp_path / "style.image_prompt.safetensors"
    save_image_prompt(prompt, path)
    loaded = load_image_prompt(path)
    assert torch.equal(loaded.cond, prompt.cond) and torch.equal(loaded.uncond, prompt.uncond)
    assert loaded.spec == prompt.spec


def _write(path, tensors, spec_json, **meta):
    metadata = {"format": "ip_adapter_image_prompt", "format_version": "1", "adapter_spec": spec_json, **meta}
    save_file({k: v.clone() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize("case,message", [
    ("nan", r"'bad\.image_prompt\.safetensors'.*cond tokens contain NaN"),
    ("inf", r"'bad\.image_prompt\.safetensors'.*uncond tokens contain NaN or infinity"),
    ("shape", r"'bad\.image_prompt\.safetensors'.*\[n, tokens, width\]"),
    ("width", r"'bad\.image_prompt\.safetensors'.*700 wide; the adapter needs 768"),
    ("tokens", r"'bad\.image_prompt\.safetensors'.*5 tokens is not a multiple of the adapter's 4"),
    ("spec_json", r"'bad\.image_prompt\.safetensors'.*not JSON"),
    ("spec_field", r"'bad\.image_prompt\.safetensors'.*missing \['tokens'\]"),
    ("spec_enum", r"'bad\.image_prompt\.safetensors'.*invalid adapter spec.*SD3"),
    ("format", r"'bad\.image_prompt\.safetensors' is not an image prompt saved by Save Image Prompt"),
    ("keys", r"exactly the tensors 'cond' and 'uncond'"),
])
def test_bad_prompt_files_are_refused_naming_the_file(tmp_path, base_adapter, case, message) -> None:
    spec = json.loads(spec_to_json(base_adapter.spec))
    good = torch.zeros(1, 4, 768)
    tensors = {"cond": good, "uncond": good.clone()}
    spec_json, meta = json.dumps(spec), {}
    if case == "nan":
        tensors["cond"] = torch.full((1, 4, 768), float("nan"))
    elif case == "inf":
        tensors["uncond"] = torch.full((1, 4, 768), float("inf"))
    elif case == "shape":
        tensors = {"cond": torch.zeros(4, 768), "uncond": torch.zeros(4, 768)}
    elif case == "width":
        tensors = {"cond": torch.zeros(1, 4, 700), "uncond": torch.zeros(1, 4, 700)}
    elif case == "tokens":
        tensors = {"cond": torch.zeros(1, 5, 768), "uncond": torch.zeros(1, 5, 768)}
    elif case == "spec_json":
        spec_json = "{not json"
    elif case == "spec_field":
        spec_json = json.dumps({k: v for k, v in spec.items() if k != "tokens"})
    elif case == "spec_enum":
        spec_json = json.dumps({**spec, "base": "SD3"})
    elif case == "format":
        meta = {"format": "something_else"}
    elif case == "keys":
        tensors["extra"] = good
    path = _write(tmp_path / "bad.image_prompt.safetensors", tensors, spec_json, **meta)
    with pytest.raises(ImagePromptError, match=message):
        load_image_prompt(path)


def test_only_safetensors_and_existing_files_are_read(tmp_path) -> None:
    pickle_path = tmp_path / "style.pt"
    torch.save({"cond": torch.zeros(1)}, pickle_path)
    with pytest.raises(ImagePromptError, match=r"'style\.pt': image prompts are read from \.safetensors files only"):
        load_image_prompt(pickle_path)
    with pytest.raises(ImagePromptError, match="not found"):
        load_image_prompt(tmp_path / "missing.image_prompt.safetensors")
    truncated = tmp_path / "cut.image_prompt.safetensors"
    truncated.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(ImagePromptError, match=r"Could not read image prompt 'cut\.image_prompt\.safetensors'"):
        load_image_prompt(truncated)


def test_saved_file_holds_float32_tokens_and_the_spec_as_json(tmp_path, base_adapter) -> None:
    tokens = torch.ones(1, 8, 768)
    prompt = ImagePrompt(cond=tokens, uncond=tokens, spec=base_adapter.spec)  # shared memory is fine
    path = tmp_path / "a.image_prompt.safetensors"
    save_image_prompt(prompt, path)
    assert {k: v.dtype for k, v in load_file(str(path)).items()} == {"cond": torch.float32, "uncond": torch.float32}
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        assert json.loads(handle.metadata()["adapter_spec"])["tokens"] == 4
