"""Command line: `python -m comfy_batch WORKFLOW --server HOST:PORT [substitutions]`.

Exit status: 0 when every item is done, 1 when any item failed (the summary and each error
are printed, and recorded in the manifest), 2 for a usage problem (bad address, missing file,
unreachable server before anything ran).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from . import plan as planning
from .client import Retry, TransientError
from .manifest import DONE, FAILED, Manifest
from .preflight import MODELS_HINT, PreflightError, format_groups, group
from .runner import Options, prepare, run

log = logging.getLogger("comfy_batch")

EXAMPLES = """examples:
  # every reference image in ~/refs x 3 seeds x 2 weights = 12 items, written outside the pack
  python -m comfy_batch workflows/api/sd15_image_prompt.json --server 127.0.0.1:8188 \\
      --images ~/refs --seeds 1-3 --weights 0.5,0.9 --out ~/ipadapter-batch

  # one item per row; columns are addresses (NODE.INPUT by id, title or class)
  python -m comfy_batch wf.json --list items.csv --out ~/ipadapter-batch
      items.csv:  "Reference image.image","KSampler.seed","Positive.text"
                  refs/dog.png,1,"a dog on a beach"   (paths relative to the CSV)
"""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="comfy-ipadapter-batch", epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Queue a batch of an API-format ComfyUI workflow and collect the images.")
    p.add_argument("workflow", type=Path, help="API-format workflow JSON (ComfyUI: Export (API))")
    p.add_argument("--server", default="127.0.0.1:8188", help="ComfyUI address, HOST:PORT or URL")
    g = p.add_argument_group("substitutions (grid axes multiply; a --list multiplies with the grid)")
    g.add_argument("--images", type=Path, metavar="DIR", help="one item per image in DIR, uploaded to the server")
    g.add_argument("--seeds", metavar="LIST", help="e.g. 1,2,3 or 1-8")
    g.add_argument("--weights", metavar="LIST", help="IP-Adapter weights, e.g. 0.4,0.7,1.0")
    g.add_argument("--prompt", action="append", default=[], metavar="TEXT", help="a prompt; repeat for several")
    for what, default in (("image", "the only LoadImage"), ("seed", "the only seed/noise_seed"),
                          ("weight", "the only ApplyIPAdapter"), ("prompt", "node titled Positive")):
        g.add_argument(f"--{what}-input", metavar="NODE.INPUT", help=f"where --{what}s go (default: {default})")
    g.add_argument("--grid", action="append", default=[], metavar="NODE.INPUT=V1,V2",
                   help="any input as a grid axis, e.g. KSampler.steps=20,30")
    g.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE", help="a fixed value for all items")
    g.add_argument("--list", type=Path, metavar="FILE", help="CSV (header: addresses) or JSONL (objects) of items")
    o = p.add_argument_group("output and behaviour")
    o.add_argument("--out", type=Path, default=Path("batch_output"),
                   help="folder for images and the manifest (best outside the pack's clone, e.g. ~/ipadapter-batch)")
    o.add_argument("--manifest", type=Path, help="results manifest (default: OUT/manifest.json); reused to resume")
    o.add_argument("--retries", type=int, default=2, help="re-runs of an item after a transient failure")
    o.add_argument("--timeout", type=float, default=3600.0, help="seconds one item may take")
    o.add_argument("--include-temp", action="store_true", help="also download preview (temp) images")
    o.add_argument("--dry-run", action="store_true", help="print the items and exit; contacts no server")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    o.add_argument("-v", "--verbose", action="store_true")
    s = p.add_argument_group("scoring (needs torch and open_clip_torch)")
    s.add_argument("--score-model", type=Path, metavar="CKPT", help="full OpenCLIP checkpoint: CLIP-I/CLIP-T per image")
    s.add_argument("--score-reference", type=Path, action="append", default=[],
                   help="reference for CLIP-I (default: each item's own reference image)")
    s.add_argument("--score-text", help="caption for CLIP-T (default: each item's prompt text)")
    s.add_argument("--score-activation", default="auto", choices=("auto", "gelu", "quick_gelu"))
    return p.parse_args(argv)


def _split(assignment: str, flag: str) -> tuple[str, str]:
    address, eq, value = assignment.partition("=")
    if not eq:
        raise planning.PlanError(f"{flag} {assignment!r}: expected NODE.INPUT=VALUE")
    return address.strip(), value


def build(args: argparse.Namespace) -> planning.Plan:
    """The plan the arguments describe (raises PlanError with the fix)."""
    workflow = planning.load_workflow(args.workflow)
    axes: list[tuple[str, list]] = []
    if args.images:
        axes.append((args.image_input or planning.default_address(workflow, "image"), planning.image_files(args.images)))
    if args.seeds:
        axes.append((args.seed_input or planning.default_address(workflow, "seed"), planning.parse_list(args.seeds, "seed")))
    if args.weights:
        axes.append((args.weight_input or planning.default_address(workflow, "weight"),
                     planning.parse_list(args.weights, "weight")))
    if args.prompt:
        axes.append((args.prompt_input or planning.default_address(workflow, "prompt"), list(args.prompt)))
    for spec in args.grid:
        address, values = _split(spec, "--grid")
        axes.append((address, planning.parse_list(values, "value")))
    fixed = [_split(spec, "--set") for spec in args.set]
    rows = planning.read_rows(args.list) if args.list else None
    return planning.build_plan(workflow, axes, fixed, rows, args.list.parent if args.list else Path("."))


def _scorer(args: argparse.Namespace, plan: planning.Plan):
    """A scorer that loads its model on first use (a resumed batch with nothing to run never
    imports torch)."""
    if args.score_model is None:
        return None
    if not args.score_model.is_file():
        raise planning.PlanError(f"--score-model {args.score_model}: file not found")
    prompt_target = planning.resolve(plan.workflow, args.prompt_input) if args.prompt_input else None
    loaded = []

    def score(item: planning.Item, outputs: list[Path]) -> dict:
        if not loaded:
            from .scoring import make_scorer

            loaded.append(make_scorer(args.score_model, args.score_reference, args.score_text, prompt_target,
                                      args.score_activation))
        return loaded[0](item, outputs)

    return score


def report(manifest: Manifest, summary: dict, ids: Sequence[str]) -> str:
    """The end-of-batch summary: counts, then each distinct problem once, with the items it hit."""
    head = (f"{summary['done']}/{summary['items']} done, {summary['failed']} failed, {summary['skipped']} "
            f"skipped (already done), {summary['wall_s']:.1f} s; manifest: {manifest.path}")
    per_item = []
    for key in ids:
        record = manifest.items.get(key, {})
        if record.get("status") == FAILED:
            error = record.get("error") or {}
            kind = error.get("type", "error")
            problems = error.get("problems") or [error.get("message", "")]
            per_item.append((record["index"], [f"{kind}: {p}" for p in problems]))
    groups = group(per_item)
    lines = [head] + [f"  {line}" for line in format_groups(groups, len(ids)).splitlines()]
    if any("Value not in list" in problem and _model_input(problem) for problem, _ in groups):
        lines.append(f"  hint: a model file is missing on the server; {MODELS_HINT}")
    return "\n".join(lines)


def _model_input(problem: str) -> bool:
    """A validation problem about a model-file input ("node 6 (LoadIPAdapter) input 'adapter_name': ...")."""
    return any(f"input {name!r}" in problem for name in MODEL_FILE_INPUTS)


MODEL_FILE_INPUTS = ("ckpt_name", "adapter_name", "clip_name", "control_net_name", "vae_name", "lora_name", "unet_name")
UNREACHABLE_HINT = ("hint: is ComfyUI running there? Start it from the ComfyUI folder with "
                    "`python main.py --listen 127.0.0.1 --port 8188` (add --cpu on a machine without a GPU), "
                    "wait until http://127.0.0.1:8188/system_stats answers, or pass --server HOST:PORT.")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        plan = build(args)
    except planning.PlanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        for prep in prepare(plan):
            print(prep.id, prep.item.inputs())
        return 0
    try:
        scorer = _scorer(args, plan)
    except planning.PlanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    options = Options(server=args.server, manifest=args.manifest or args.out / "manifest.json", out_dir=args.out,
                      timeout=args.timeout, retries=args.retries, retry=Retry(), progress=not args.no_progress,
                      include_temp=args.include_temp, scorer=scorer)
    try:
        manifest, summary = asyncio.run(run(plan, options, str(args.workflow)))
    except PreflightError as exc:
        print(f"error: the server would refuse this batch; nothing was uploaded or queued:\n{exc}", file=sys.stderr)
        return 2
    except TransientError as exc:  # server unreachable
        print(f"error: {exc}\n{UNREACHABLE_HINT}", file=sys.stderr)
        return 2
    except ValueError as exc:  # unreadable manifest
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ids = [p.id for p in prepare(plan)]
    print(report(manifest, summary, ids))
    return 0 if all(manifest.items.get(i, {}).get("status") == DONE for i in ids) else 1
