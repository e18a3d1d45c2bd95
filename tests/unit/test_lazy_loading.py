"""Loading does only what it must: no default init, no copies, memory-mapped files; the safety checks stay."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import pytest
import torch
from ipadapter_pack.ip_adapter import model as model_module
from ipadapter_pack.ip_adapter.errors import AdapterFormatError
from ipadapter_pack.ip_adapter.finite import non_finite
from ipadapter_pack.ip_adapter.model import _PROJECTIONS, IPAdapterModel
from ipadapter_pack.ip_adapter.state_dict import detect_spec, split
from support import checkpoints

VARIANTS = ("ip-adapter_sd15", "ip-adapter-plus_sd15", "ip-adapter-full-face_sd15", "ip-adapter-plus_sdxl_vit-h")


def _reference(sd: dict[str, torch.Tensor]) -> IPAdapterModel:
    """The straightforward load: build with default init on the CPU in the file's dtype, then copy the weights in."""
    spec = detect_spec(sd, "reference")
    model = IPAdapterModel(spec, _PROJECTIONS[spec.projection].from_shapes(split(sd)[0]))
    model = model.to(next(iter(sd.values())).dtype)
    model.load_state_dict(sd, strict=True)
    return model.eval().requires_grad_(False)


def _write(sd: dict[str, torch.Tensor], path: Path) -> Path:
    return (checkpoints.save_safetensors if path.suffix == ".safetensors" else checkpoints.save_bin)(sd, path)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("suffix,dtype", [(".safetensors", torch.float16), (".safetensors", torch.float32),
                                          (".bin", torch.float16)])
def test_a_lazy_load_equals_the_reference_load_bit_for_bit(tmp_path, variant, suffix, dtype) -> None:
    sd = checkpoints.ip_adapter_state_dict(variant, "small", seed=5, dtype=dtype)
    loaded = IPAdapterModel.from_file(_write(sd, tmp_path / f"{variant}{suffix}"))
    reference = _reference(sd)
    assert str(loaded) == str(reference) and loaded.spec == reference.spec
    got, want = loaded.state_dict(), reference.state_dict()
    assert list(got) == list(want)
    for key, tensor in want.items():
        assert got[key].dtype == tensor.dtype and got[key].device.type == "cpu", key
        assert torch.equal(got[key], tensor), key
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    features = torch.randn(2, *((1024,) if loaded.spec.feature.value == "image_embeds" else (257, 1280)))
    assert torch.equal(loaded.project(features), reference.project(features))


def test_no_parameter_is_allocated_or_initialised_before_the_weights_are_adopted(tmp_path, monkeypatch) -> None:
    path = _write(checkpoints.ip_adapter_state_dict("ip-adapter-plus_sd15", "small"), tmp_path / "plus.safetensors")
    registered, initialised = [], []
    handle = torch.nn.modules.module.register_module_parameter_registration_hook(
        lambda module, name, param: registered.append(param.device.type))
    for name in ("kaiming_uniform_", "uniform_", "ones_", "zeros_", "normal_"):
        original = getattr(torch.nn.init, name)

        def counting(tensor, *args, _original=original, **kwargs):
            initialised.append(tensor.device.type)
            return _original(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.nn.init, name, counting)
    try:
        model = IPAdapterModel.from_file(path)
        lazy = (list(registered), list(initialised))
        registered.clear(), initialised.clear()
        torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))  # the counters do count torch's init
    finally:
        handle.remove()
    count = len(list(model.parameters()))
    # Each parameter: created once on the meta device, then registered once more when the file's tensor is
    # assigned; a parameter allocated on the CPU while building would show as an extra "cpu" registration.
    assert lazy[0].count("meta") == count and lazy[0].count("cpu") == count and len(lazy[0]) == 2 * count
    assert lazy[1] == [], "default init ran (not even on the meta device is it needed)"
    assert registered.count("cpu") == 4 and initialised.count("cpu") >= 2  # a plain torch build allocates and inits
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_weights_are_adopted_not_copied() -> None:
    sd = checkpoints.ip_adapter_state_dict("ip-adapter-plus_sd15", "small")
    model = IPAdapterModel.from_state_dict(sd, "x.safetensors")
    for key, tensor in model.state_dict().items():
        assert tensor.data_ptr() == sd[key].data_ptr(), key


def _mapped_ranges(path: Path) -> list[tuple[int, int]]:
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and os.path.realpath(parts[5].strip()) == os.path.realpath(path):
                start, end = (int(x, 16) for x in parts[0].split("-"))
                ranges.append((start, end))
    return ranges


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_weights_stay_memory_mapped_from_the_file(tmp_path, suffix) -> None:
    path = _write(checkpoints.ip_adapter_state_dict("ip-adapter-plus_sd15", "small", dtype=torch.float16),
                  tmp_path / f"plus{suffix}")
    model = IPAdapterModel.from_file(path)
    ranges = _mapped_ranges(path)
    assert ranges, "the file is not mapped"
    for key, tensor in model.state_dict().items():
        assert any(start <= tensor.data_ptr() < end for start, end in ranges), f"{key} was copied into memory"


def test_a_legacy_pickle_without_zip_still_loads(tmp_path) -> None:
    sd = checkpoints.ip_adapter_state_dict("ip-adapter_sd15", "small")
    path = tmp_path / "legacy.bin"
    torch.save(checkpoints.nest(sd), path, _use_new_zipfile_serialization=False)
    loaded = IPAdapterModel.from_file(path).state_dict()
    assert all(torch.equal(loaded[key], tensor) for key, tensor in sd.items())


class _Payload:
    """Unpickling this runs `touch`; a safe loader refuses it before."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zip_format", [True, False])
def test_pickles_with_code_are_still_refused_on_the_mmap_path(tmp_path, zip_format) -> None:
    marker, path = tmp_path / "ran", tmp_path / "evil.bin"
    torch.save({"image_proj": {"proj.weight": _Payload(str(marker))}}, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(AdapterFormatError, match=r"Refused to load 'evil\.bin'.*pickle"):
        IPAdapterModel.from_file(path)
    assert not marker.exists()
    with open(path, "wb") as f:
        pickle.dump({"x": _Payload(str(marker))}, f)
    with pytest.raises(AdapterFormatError, match=r"Refused to load 'evil\.bin'"):
        IPAdapterModel.from_file(path)
    assert not marker.exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("use", ["project", "image_kv"])
def test_non_finite_weights_in_a_file_are_refused_naming_file_and_key(tmp_path, bad, use) -> None:
    sd = checkpoints.ip_adapter_state_dict("ip-adapter-plus_sd15", "small", dtype=torch.float16)
    sd["image_proj.layers.1.0.to_kv.weight"][3, 7] = bad
    model = IPAdapterModel.from_file(_write(sd, tmp_path / "broken-plus.safetensors"))
    calls = {"project": lambda: model.project(torch.zeros(1, 257, 1280)),
             "image_kv": lambda: model.image_kv(torch.zeros(1, 16, 768), torch.device("cpu"), torch.float32)}
    with pytest.raises(AdapterFormatError, match=r"'broken-plus\.safetensors' has NaN or infinite values in "
                                                 r"image_proj\.layers\.1\.0\.to_kv\.weight; .*download it again"):
        calls[use]()
    with pytest.raises(AdapterFormatError, match="broken-plus"):  # and again: a refused file stays refused
        calls[use]()


def test_the_finiteness_check_runs_once(monkeypatch) -> None:
    model = IPAdapterModel.from_state_dict(checkpoints.ip_adapter_state_dict("ip-adapter_sd15", "small"), "x")
    calls = []
    monkeypatch.setattr(model_module, "non_finite", lambda named: calls.append(1) or non_finite(named))
    model.project(torch.zeros(1, 1024))
    model.project(torch.zeros(2, 1024))
    model.image_kv(torch.zeros(1, 4, 768), torch.device("cpu"), torch.float32)
    assert calls == [1]


def test_non_finite_is_exact_where_a_sum_overflows() -> None:
    big = torch.full((64, 64), 60000.0, dtype=torch.float16)  # finite, but its sum overflows fp16
    assert torch.isinf(big.sum())
    nan_bf16 = torch.ones(10, dtype=torch.bfloat16)
    nan_bf16[4] = float("nan")
    inf_fp32 = torch.zeros(3, 3)
    inf_fp32[1, 1] = float("-inf")
    named = [("big", big), ("nan", nan_bf16), ("ok", torch.randn(5)), ("ints", torch.arange(4)),
             ("inf", inf_fp32), ("empty", torch.zeros(0))]
    assert non_finite(named) == ["nan", "inf"]
    assert non_finite([]) == []


def test_half_weights_on_the_cpu_project_in_float32_exactly(tmp_path) -> None:
    sd = checkpoints.ip_adapter_state_dict("ip-adapter-plus_sd15", "small", dtype=torch.float16)
    half = IPAdapterModel.from_state_dict(sd, "half")
    full = IPAdapterModel.from_state_dict({k: v.float() for k, v in sd.items()}, "full")
    features = torch.randn(2, 257, 1280)
    assert torch.equal(half.project(features), full.project(features))
    copy = half._cpu_projection()
    half.project(features)
    assert half._cpu_projection() is copy  # made once
    assert all(p.dtype == torch.float16 for p in half.parameters())  # the module itself is unchanged
    assert set(half.state_dict()) == set(sd)  # the copy is not part of the module's state
