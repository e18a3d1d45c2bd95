"""Start a real ComfyUI 0.8.0 server on loopback for end-to-end tests, and always stop it.

How the server is isolated (flags read in ComfyUI 0.8.0's `comfy/cli_args.py`, `folder_paths.py`,
`main.py`):

* `--base-directory BASE` moves `models/`, `custom_nodes/`, `input/`, `output/`, `temp/` and
  `user/` under BASE, so nothing is read from or written into the ComfyUI checkout and only
  the packs linked into BASE/custom_nodes load (never those installed in the checkout).
  `--input/--output/--temp/--user-directory` would override single folders; not needed here.
* `--database-url sqlite:///:memory:` (the default database file lives in the checkout's
  `user/`), `PYTHONDONTWRITEBYTECODE=1` (no `__pycache__` in the checkout),
  `--disable-api-nodes` (no network, faster start), `--cpu`, `--listen 127.0.0.1`, a free port.
* An `extra_model_paths.yaml` in the checkout is still read by `main.py`; none exists in the
  test checkout, and BASE's folders come first anyway.

`write_tiny_models(BASE)` fills BASE/models with random-weight files in the real layouts under
the published names that `workflows/api/*.json` use: the smallest SD1.5 checkpoint ComfyUI's
detection accepts (`support.sd15_checkpoint`), an IP-Adapter (`ip-adapter_sd15` keys, 320-wide
layers to match that UNet), and a tiny CLIP vision tower with its JSON config, which only the
test node `TinyCLIPVisionLoader` (support/comfy_test_nodes) can load: see `tiny_workflow`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import checkpoints, clip_vision_files, sd15_checkpoint
from .child_processes import die_with_parent
from .comfy_harness import REPO_ROOT, ComfyHarnessError, find_comfyui

log = logging.getLogger(__name__)

PACK_DIR_NAME = "comfyui-ip-adapter"
TEST_NODES_DIR = Path(__file__).resolve().parent / "comfy_test_nodes"
DEFAULT_PACKS: dict[str, Path] = {PACK_DIR_NAME: REPO_ROOT, "ip_adapter_test_nodes": TEST_NODES_DIR}
DEFAULT_ARGS: tuple[str, ...] = ("--cpu", "--disable-api-nodes", "--disable-auto-launch")

CHECKPOINT_NAME = "v1-5-pruned-emaonly.safetensors"
ADAPTER_NAME = "ip-adapter_sd15.safetensors"
CLIP_VISION_NAME = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"


class ComfyServerError(ComfyHarnessError):
    """The server did not start, a pack failed to import, or it did not stop; has the log tail."""


@dataclass
class ComfyServer:
    """A running server: its address, folders and log."""

    url: str
    base_dir: Path
    process: subprocess.Popen
    log_path: Path

    @property
    def address(self) -> str:
        """`host:port`, as the batch tool and ComfyUI's own scripts take it."""
        return self.url.split("://", 1)[1]

    def folder(self, name: str) -> Path:
        """`input`, `output`, `temp`, `user`, or `models/<folder>` under the base directory."""
        return self.base_dir / name

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get_json(self, path: str, timeout: float = 30.0) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return json.loads(response.read())

    def post_json(self, path: str, payload: Any, timeout: float = 30.0) -> tuple[int, Any]:
        """POST JSON; returns (status, decoded body) for 2xx and 4xx alike."""
        request = urllib.request.Request(
            self.url + path, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def run_prompt(self, prompt: Mapping[str, Any], timeout_s: float = 300) -> dict:
        """Queue an API-format prompt, wait for it, and return its outputs; fail with the server's log."""
        status, body = self.post_json("/prompt", {"prompt": prompt})
        assert status == 200, body
        prompt_id = body["prompt_id"]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            history = self.get_json(f"/history/{prompt_id}")
            if prompt_id in history:
                entry = history[prompt_id]
                assert entry["status"]["status_str"] == "success", entry["status"]
                return entry["outputs"]
            time.sleep(0.5)
        raise AssertionError(f"prompt did not finish in {timeout_s} s:\n{self.log()[-3000:]}")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_base_dir(base: Path, packs: Mapping[str, Path] | None = None) -> Path:
    """Create BASE's folders and link each pack into BASE/custom_nodes (nothing else loads)."""
    base = Path(base)
    for name in ("models", "input", "output", "temp", "user", "custom_nodes"):
        (base / name).mkdir(parents=True, exist_ok=True)
    for name, target in (DEFAULT_PACKS if packs is None else packs).items():
        link = base / "custom_nodes" / name
        if not link.exists():
            link.symlink_to(Path(target).resolve(), target_is_directory=True)
    return base


def _cached_checkpoint(cache_dir: Path, seed: int) -> Path:
    """The tiny checkpoint, built once per builder version and seed (it takes ~10-30 s)."""
    source = Path(sd15_checkpoint.__file__).read_bytes() + Path(clip_vision_files.__file__).read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:12]
    path = Path(cache_dir) / f"tiny_sd15_{digest}_seed{seed}.safetensors"
    if not path.exists():
        partial = path.with_suffix(f".partial{os.getpid()}")
        sd15_checkpoint.write_sd15_checkpoint(partial, seed=seed)
        partial.replace(path)  # atomic: a concurrent session never sees half a file
    return path


def write_tiny_models(base: Path, seed: int = 0, cache_dir: Path | None = None) -> dict[str, Path]:
    """Random-weight models under the published names (see the module docstring).

    With `cache_dir` (e.g. pytest's `config.cache.mkdir(...)`), the ~600 MB checkpoint is built
    once there and symlinked into BASE.
    """
    models = Path(base) / "models"
    paths = {
        "checkpoint": models / "checkpoints" / CHECKPOINT_NAME,
        "ipadapter": models / "ipadapter" / ADAPTER_NAME,
        "clip_vision": models / "clip_vision" / CLIP_VISION_NAME,
    }
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    if cache_dir is not None and not paths["checkpoint"].exists():
        paths["checkpoint"].symlink_to(_cached_checkpoint(cache_dir, seed))
    elif not paths["checkpoint"].exists():
        sd15_checkpoint.write_sd15_checkpoint(paths["checkpoint"], seed=seed)
    adapter = checkpoints.ip_adapter_state_dict("ip-adapter_sd15", size="full", seed=seed)
    for key, value in adapter.items():  # the tiny UNet is 320 wide at every level
        if key.startswith("ip_adapter."):
            adapter[key] = value[: sd15_checkpoint.UNET_WIDTH].clone()
    checkpoints.save_safetensors(adapter, paths["ipadapter"])
    config = clip_vision_files.tiny_clip_vision_config(hidden=64, projection_dim=1024)
    clip_vision_files.save_clip_vision_config(config, paths["clip_vision"].with_suffix(".json"))
    clip_vision_files.write_clip_vision(paths["clip_vision"], config, seed=seed, dtype=torch.float32)
    return paths


def tiny_workflow(workflow: Mapping[str, Any], size: int = 64, steps: int = 1) -> dict[str, Any]:
    """An API workflow adapted to `write_tiny_models`: test CLIP vision loader, small and short.

    Only what the tiny models need changes: `CLIPVisionLoader` -> `TinyCLIPVisionLoader` (same
    input), latent width/height, sampler steps. Everything else runs as shipped.
    """
    out = json.loads(json.dumps(workflow))
    for node in out.values():
        inputs = node.get("inputs", {})
        if node.get("class_type") == "CLIPVisionLoader":
            node["class_type"] = "TinyCLIPVisionLoader"
        if node.get("class_type") == "EmptyLatentImage":
            inputs.update(width=size, height=size)
        if "steps" in inputs and node.get("class_type", "").startswith("KSampler"):
            inputs["steps"] = steps
    return out


def _log_tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def _wait_ready(url: str, process: subprocess.Popen, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ComfyServerError(f"ComfyUI exited with {process.returncode} before it was ready:\n{_log_tail(log_path)}")
        try:
            with urllib.request.urlopen(url + "/system_stats", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    raise ComfyServerError(f"ComfyUI not ready at {url} after {timeout:.0f} s:\n{_log_tail(log_path)}")


def _check_packs_imported(log_path: Path, custom_nodes: Path) -> None:
    """Fail on `(IMPORT FAILED): BASE/custom_nodes/...` lines (ComfyUI's per-pack summary).

    ComfyUI also prints `IMPORT FAILED: nodes_audio.py` for its own optional `comfy_extras`
    (torchaudio absent here); those are not this test's concern and are left alone.
    """
    failed = [line for line in log_path.read_text(errors="replace").splitlines()
              if "IMPORT FAILED" in line and str(custom_nodes) in line]
    if failed:
        raise ComfyServerError("custom node import failed:\n" + "\n".join(failed) + "\n" + _log_tail(log_path))


def _stop(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM our own process group (the server and anything it spawned), then SIGKILL."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)


@contextlib.contextmanager
def comfy_server(
    base_dir: Path,
    *,
    comfyui: Path | None = None,
    packs: Mapping[str, Path] | None = None,
    args: Sequence[str] = DEFAULT_ARGS,
    start_timeout: float = 180.0,
    stop_timeout: float = 15.0,
) -> Iterator[ComfyServer]:
    """Run `python main.py` of ComfyUI (found by `find_comfyui`) on 127.0.0.1 until the block ends.

    Raises `ComfyServerError` (with the log tail) if it does not answer `/system_stats` within
    `start_timeout` seconds or its log reports `IMPORT FAILED` for a pack. The server is stopped
    on every exit path.
    """
    root = comfyui or find_comfyui()
    if root is None:
        raise ComfyServerError("ComfyUI not found: set COMFYUI_PATH or install one at ~/comfy/ComfyUI")
    base = prepare_base_dir(Path(base_dir), packs)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = base / "comfyui.log"
    argv = [sys.executable, "main.py", *args, "--listen", "127.0.0.1", "--port", str(port),
            "--base-directory", str(base), "--database-url", "sqlite:///:memory:"]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(argv, cwd=root, stdout=log_file, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                   preexec_fn=die_with_parent())
    log.info("ComfyUI pid %d on %s, log %s", process.pid, url, log_path)
    try:
        _wait_ready(url, process, log_path, start_timeout)
        _check_packs_imported(log_path, base / "custom_nodes")
        yield ComfyServer(url=url, base_dir=base, process=process, log_path=log_path)
    finally:
        _stop(process, stop_timeout)
