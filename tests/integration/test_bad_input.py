"""Bad files and bad API requests (README "Bad input" catalogue), through ComfyUI's real validator and executor.

Each bad prompt is refused with a message that names the node, input or file and
the fix (never a torch trace), or rejected by validation before anything runs;
then the same executor still runs a good prompt exactly as a fresh one does.
"""

from __future__ import annotations

import os
import pickle
import struct

import pytest
import torch
from support import checkpoints
from support.bad_input import APPLY, GOOD_ADAPTER, LOADER, graph, write_adapter
from support.comfy_harness import run_node


@pytest.fixture(autouse=True)
def good_adapter(model_dirs) -> None:
    """The adapter of the good prompts, in this test's model folder (bad prompts change one thing)."""
    write_adapter(model_dirs, GOOD_ADAPTER, "ip-adapter_sd15")


# ------------------------------------------------------------------------------------------ files

def _truncated(path):
    checkpoints.write_truncated_safetensors(path)


def _garbage(path):
    path.write_bytes(os.urandom(4096))


def _empty(path):
    path.write_bytes(b"")


def _bad_header(path):
    header = b'{"image_proj.proj.weight": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]'  # no "}"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(64))


@pytest.mark.parametrize("damage", [_truncated, _garbage, _empty, _bad_header], ids=lambda f: f.__name__[1:])
def test_damaged_safetensors_is_refused_by_name(served, model_dirs, damage) -> None:
    name = f"damaged_{damage.__name__[1:]}.safetensors"
    damage(model_dirs["ipadapter"] / name)
    served.refused(graph(name), "LoadIPAdapter", rf"Could not read IP-Adapter file '{name}'.*download it again",
                   "AdapterFormatError")
    served.still_serves(model_dirs)


class _Payload:
    """Unpickling this runs `touch <marker>`; a safe loader must never get that far."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["pickle.dump", "torch.save"])
def test_pickle_payload_is_refused_and_never_runs(served, model_dirs, tmp_path, writer) -> None:
    marker = tmp_path / "payload_ran"
    name = f"evil_{writer.replace('.', '_')}.bin"
    path = model_dirs["ipadapter"] / name
    payload = {"image_proj": {"proj.weight": _Payload(str(marker))}, "ip_adapter": {}}
    if writer == "torch.save":
        torch.save(payload, str(path))
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    served.refused(graph(name), "LoadIPAdapter", rf"Refused to load '{name}'.*can run code.*'\.safetensors' release",
                   "AdapterFormatError")
    assert not marker.exists(), "the payload ran"
    served.still_serves(model_dirs)
    # The payload is live: an unsafe load would have run it.
    if writer == "torch.save":
        torch.load(str(path), weights_only=False)
    else:
        with open(path, "rb") as f:
            pickle.load(f)
    assert marker.exists()


def test_unknown_key_is_named(served, model_dirs) -> None:
    sd = checkpoints.state_dict_with_unknown_key("ip-adapter_sd15")
    checkpoints.save_safetensors(sd, model_dirs["ipadapter"] / "odd_key.safetensors")
    served.refused(graph("odd_key.safetensors"), "LoadIPAdapter",
                   r"'odd_key\.safetensors'.*unknown keys image_proj\.unexpected_extra\.weight", "AdapterFormatError")
    served.still_serves(model_dirs)


@pytest.mark.parametrize("variant,key,pattern", [
    ("ip-adapter_sd15", None, r"missing ip_adapter\.31\.to_v_ip\.weight"),
    ("ip-adapter-plus_sd15", "image_proj.layers.2.0.to_kv.weight", r"missing keys image_proj\.layers\.2\.0\.to_kv"),
], ids=["layer", "projection"])
def test_missing_key_is_named(served, model_dirs, variant, key, pattern) -> None:
    sd, _ = checkpoints.state_dict_missing_key(variant, key)
    name = f"missing_{variant}.safetensors"
    checkpoints.save_safetensors(sd, model_dirs["ipadapter"] / name)
    served.refused(graph(name), "LoadIPAdapter", rf"'{name}'.*{pattern}", "AdapterFormatError")
    served.still_serves(model_dirs)


# ----------------------------------------------------------------------------------- API requests

@pytest.mark.parametrize("weight,pattern", [
    (7.5, r"Value 7\.5 bigger than max of 3\.0: weight"),
    (-4, r"Value -4\.0 smaller than min of -1\.0: weight"),
    ("strong", r"Failed to convert an input value to a FLOAT value: weight, strong"),
], ids=["above", "below", "text"])
def test_weight_outside_range_is_rejected_by_validation(served, model_dirs, weight, pattern) -> None:
    served.rejected(graph(weight=weight), APPLY, pattern)
    served.still_serves(model_dirs)


@pytest.mark.parametrize("weight", ["nan", float("nan")])
def test_nan_weight_is_refused(served, model_dirs, weight) -> None:
    served.refused(graph(weight=weight), "ApplyIPAdapter", r"ApplyIPAdapter: weight is nan", "ImagePromptError")
    served.still_serves(model_dirs)


@pytest.mark.parametrize("field", ["start", "end"])
def test_nan_schedule_is_refused(served, model_dirs, field) -> None:
    served.refused(graph(**{field: "nan"}), "ApplyIPAdapter",
                   rf"ApplyIPAdapter: {field}_percent is nan.*between 0 and 1", "ImagePromptError")
    served.still_serves(model_dirs)


def _outside_adapter(model_dirs) -> str:
    """A valid adapter one level above models/ipadapter: a path in the name could reach it."""
    outside = model_dirs["ipadapter"].parent / "outside.safetensors"
    checkpoints.save_safetensors(checkpoints.ip_adapter_state_dict("ip-adapter_sd15", "small"), outside)
    return str(outside)


def test_model_name_with_a_path_is_rejected_by_validation(served, model_dirs) -> None:
    outside = _outside_adapter(model_dirs)
    for name in ("../outside.safetensors", outside, "sub/../../outside.safetensors"):
        served.rejected(graph(name), LOADER, rf"Value not in list: adapter_name: '{name}' not in")
    served.still_serves(model_dirs)


@pytest.mark.parametrize("name", ["../outside.safetensors", "ABSOLUTE", "../../models/outside.safetensors"])
def test_model_name_with_a_path_never_reads_outside_the_folder(comfy, model_dirs, name) -> None:
    """Even past validation (a node calling the loader directly) the valid file outside the folder is not read:
    ComfyUI's `get_full_path` maps the name inside the folder, where no such file exists."""
    outside = _outside_adapter(model_dirs)
    with pytest.raises(FileNotFoundError, match=r"Model in folder 'ipadapter' with filename .* not found"):
        run_node("LoadIPAdapter", adapter_name=outside if name == "ABSOLUTE" else name)
