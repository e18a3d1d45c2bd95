"""ComfyUI's memory flags: the adapter still loads with the UNet, is released with it, and nothing leaks.

Each flag needs its own ComfyUI process (flags are read once, at import), so the prompt runs in
`support.model_management_probe` and this test reads its JSON report.

What can run where (ComfyUI 0.8.0, `comfy/cli_args.py` and `comfy/model_management.py`):
--disable-smart-memory works with --cpu: the executor unloads every model after each prompt.
--lowvram and --novram are refused together with --cpu (one mutually exclusive group), and
without --cpu ComfyUI needs a GPU; so they run only where torch sees CUDA, and skip otherwise.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from support import comfy_harness

TESTS_DIR = comfy_harness.REPO_ROOT / "tests"
CASES = {"--disable-smart-memory": ("--cpu", "--disable-smart-memory"), "--lowvram": ("--lowvram",),
         "--novram": ("--novram",)}
VRAM_STATE = {"--lowvram": "LOW_VRAM", "--novram": "NO_VRAM", "--disable-smart-memory": "DISABLED"}


def _probe(argv: tuple[str, ...], out_dir) -> dict:
    done = subprocess.run([sys.executable, "-m", "support.model_management_probe", str(out_dir), *argv],
                          cwd=TESTS_DIR, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("flag", list(CASES))
def test_adapter_follows_the_unet_under_memory_flags(comfyui_path, tmp_path, flag) -> None:
    if "--cpu" not in CASES[flag] and not torch.cuda.is_available():
        pytest.skip(f"ComfyUI 0.8.0 refuses {flag} with --cpu and needs a GPU without it")
    report = _probe(CASES[flag], tmp_path)
    assert report["vram_state"] == VRAM_STATE[flag]
    assert report["unet_calls"] >= 2
    assert report["during_sampling"] == ["adapter", "patched_unet"]  # loaded together for sampling
    if report["load_device"] == "cpu" or flag == "--lowvram":
        # Full load: the adapter's weights sit on the UNet's device. (--novram keeps weights off
        # the GPU and the patch moves the K/V projection's inputs itself.)
        assert report["adapter_devices_during_sampling"] == [report["load_device"]]

    after = report["after_prompt"]
    if flag == "--disable-smart-memory":
        assert report["disable_smart_memory"]
        assert after["loaded"] == [] and after["adapter_loaded_bytes"] == 0  # unloaded with the UNet
    else:
        assert after["loaded"] == ["adapter", "patched_unet"]
    released = report["after_unload_all_models"]
    assert released["loaded"] == [] and released["adapter_loaded_bytes"] == 0
    assert released["adapter_devices"] == ["cpu"]  # back on the offload device
    assert report["alive_after_release"] == []  # weakrefs: nothing keeps them once the executor lets go
