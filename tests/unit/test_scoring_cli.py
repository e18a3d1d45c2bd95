"""The folder-scoring command and the shared report (table, JSON, plot), without ComfyUI."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from ipadapter_pack.ip_adapter.scoring import cli
from ipadapter_pack.ip_adapter.scoring.report import (
    Row,
    format_table,
    plot_scores,
    to_dict,
)
from ipadapter_pack.ip_adapter.scoring.scorer import load_scorer
from PIL import Image
from support import openclip_checkpoints as oc
from support.pack import REPO_ROOT

WEIGHTS = (1.0, 0.2, 0.6)


def _save(array: np.ndarray, path) -> None:
    Image.fromarray(array).save(path)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A tiny model + its config JSON, a reference, and a folder with one image per weight."""
    root = tmp_path_factory.mktemp("sweep")
    model, _ = oc.write_tiny(root / "tiny.safetensors", seed=11)
    config = root / "open_clip_config.json"
    config.write_text(json.dumps({"model_cfg": oc.TINY_CONFIG}))  # as in Hugging Face model repos
    rng = np.random.default_rng(0)
    reference = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
    _save(reference, root / "ref.png")
    folder = root / "images"
    folder.mkdir()
    for w in WEIGHTS:  # weight w: a blend of the reference and noise, more reference at higher w
        noise = rng.random((48, 64, 3)) * 255
        _save((w * reference + (1 - w) * noise).astype(np.uint8), folder / f"sweep_w{w}.png")
    _save(reference, folder / "copy_of_reference.png")  # no weight in its name
    (folder / "notes.txt").write_text("not an image")
    return {"model": model, "config": config, "reference": root / "ref.png", "folder": folder, "root": root}


def _argv(sweep, *extra: str) -> list[str]:
    return ["--model", str(sweep["model"]), "--model-config", str(sweep["config"]),
            "--reference", str(sweep["reference"]), "--images", str(sweep["folder"]), *extra]


def test_weight_sweep_table_and_json(sweep, capsys) -> None:
    out_json, out_png = sweep["root"] / "out.json", sweep["root"] / "plot.png"
    assert cli.main(_argv(sweep, "--text", "a photo", "--weights-from-filenames", r"w([0-9.]+)",
                          "--json", str(out_json), "--plot", str(out_png))) == 0
    printed = capsys.readouterr().out
    assert "weight" in printed and "CLIP-I" in printed and "CLIP-T" in printed and "mean" in printed
    data = json.loads(out_json.read_text())
    assert data["architecture"] == "open_clip_config" and data["text"] == "a photo"
    assert set(data["definitions"]) == {"clip_i", "clip_t"} and "2.5" in data["definitions"]["clip_t"]
    rows = data["rows"]
    assert [r["weight"] for r in rows] == [0.2, 0.6, 1.0, None]  # sorted; the unnamed file last
    assert rows[-1]["image"] == "copy_of_reference.png" and abs(rows[-1]["clip_i"] - 1.0) < 1e-5

    scorer = load_scorer(sweep["model"], architectures={"tiny": oc.TINY_CONFIG})
    ref = cli.load_image(sweep["reference"])
    for row in rows:
        scores = scorer.score(cli.load_image(sweep["folder"] / row["image"]), ref, "a photo")
        assert row["clip_i"] == pytest.approx(scores.clip_i_mean, abs=1e-6)
        assert row["clip_t"] == pytest.approx(scores.clip_t_mean, abs=1e-6)
    assert data["mean"]["clip_i"] == pytest.approx(sum(r["clip_i"] for r in rows) / len(rows))
    assert Image.open(out_png).size == (480, 270)


def test_without_text_clip_t_is_null(sweep, capsys) -> None:
    out_json = sweep["root"] / "no_text.json"
    cli.main(_argv(sweep, "--json", str(out_json)))
    data = json.loads(out_json.read_text())
    assert all(r["clip_t"] is None and r["weight"] is None for r in data["rows"])
    assert data["mean"]["clip_t"] is None and data["text"] is None
    assert next(r["image"] for r in data["rows"]) == "copy_of_reference.png"  # natural file order


def test_weight_patterns() -> None:
    assert cli.weight_from_name("ip_w0.75.png", re.compile(r"w([0-9.]+)")) == 0.75
    assert cli.weight_from_name("run-3_weight=1.5_seed2.png", re.compile(r"weight=(?P<weight>[0-9.]+)")) == 1.5
    assert cli.weight_from_name("a.png", re.compile(r"w([0-9.]+)")) is None
    assert cli.weight_from_name("w12.png", re.compile(r"\d+")) == 12.0
    with pytest.raises(SystemExit, match="not a number"):
        cli.weight_from_name("w..png", re.compile(r"w([0-9.]+)"))


def test_unknown_architecture_exits_with_the_loaders_message(sweep, capsys) -> None:
    argv = _argv(sweep)
    del argv[2:4]  # no --model-config: the tiny architecture is unknown
    with pytest.raises(SystemExit, match="error: 'tiny.safetensors' is an unknown CLIP architecture"):
        cli.main(argv)


def test_bad_folder_is_reported(tmp_path) -> None:
    with pytest.raises(SystemExit, match="not a folder"):
        cli.list_images(tmp_path / "missing")
    with pytest.raises(SystemExit, match="no .png"):
        cli.list_images(tmp_path)


def test_runs_as_a_module_without_comfyui_or_network(sweep) -> None:
    """`python -m ip_adapter.scoring` from the pack folder, with sockets disabled."""
    prelude = textwrap.dedent("""
        import runpy, socket, sys
        def refuse(*args, **kwargs):
            raise OSError("network access attempted")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        sys.argv = ["ip_adapter.scoring"] + sys.argv[1:]
        try:
            runpy.run_module("ip_adapter.scoring", run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            code = exc.code
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("comfy", "comfy_api", "folder_paths"))
        print("LEAKED", leaked)
        sys.exit(code)
    """)
    result = subprocess.run([sys.executable, "-c", prelude, *_argv(sweep, "--text", "a dog")],
                            check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "LEAKED []" in result.stdout
    assert "copy_of_reference.png" in result.stdout


def test_table_and_dict_formats() -> None:
    rows = [Row("1", 0.91234, 0.61, 0.5), Row("2", 0.8, None, 1.0)]
    table = format_table(rows, title="t")
    lines = table.splitlines()
    assert lines[0] == "t" and lines[1].split() == ["image", "weight", "CLIP-I", "CLIP-T"]
    assert lines[3].split() == ["1", "0.500", "0.9123", "0.6100"]
    assert lines[4].split() == ["2", "1.000", "0.8000", "-"]
    assert lines[-1].split() == ["mean", "0.8562", "0.6100"]
    data = to_dict([Row("a", 0.5, math.nan)], model="m")
    assert data["model"] == "m" and data["rows"][0]["clip_t"] is None and data["mean"]["clip_t"] is None
    json.dumps(data, allow_nan=False)  # strict JSON: no NaN


def test_plot_is_a_small_rgb_image_that_draws_the_series() -> None:
    rows = [Row(str(i), 0.5 + 0.1 * i, 0.3 + 0.05 * i, w) for i, w in enumerate((0.0, 0.5, 1.0))]
    image = plot_scores(rows)
    assert image.mode == "RGB" and image.size == (480, 270)
    pixels = torch.from_numpy(np.array(image)).reshape(-1, 3)
    for color in ((31, 119, 180), (214, 39, 40)):
        assert (pixels == torch.tensor(color, dtype=torch.uint8)).all(-1).sum() > 50
    assert plot_scores([Row("1", 0.9)]).size == (480, 270)  # one point, no CLIP-T
    assert plot_scores([]).size == (480, 270)
