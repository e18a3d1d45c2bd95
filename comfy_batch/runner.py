"""Run a plan against a server: skip finished items, run the rest one at a time, record each.

Items run one after another (ComfyUI executes one prompt at a time anyway, and its cache then
re-uses what consecutive items share, e.g. the loaded checkpoint and an unchanged image
prompt). An item's failure is recorded and the batch goes on; transient failures (server
unreachable, 5xx, a prompt lost by a restarting server) are retried, validation and execution
errors are not.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import plan as planning
from . import preflight
from .client import BatchError, ComfyClient, Retry, TransientError
from .manifest import DONE, FAILED, Manifest
from .progress import Follower

log = logging.getLogger(__name__)

# Called with (item, output paths) after an item's images are downloaded; returns its scores.
Scorer = Callable[[planning.Item, list[Path]], dict[str, Any]]


@dataclass
class Options:
    server: str
    manifest: Path
    out_dir: Path
    timeout: float = 3600.0
    retries: int = 2
    retry: Retry = field(default_factory=Retry)
    progress: bool = True
    include_temp: bool = False
    scorer: Scorer | None = None


@dataclass
class Prepared:
    """An item with its final prompt and stable id."""

    item: planning.Item
    prompt: dict[str, Any]
    id: str


def prepare(plan: planning.Plan) -> list[Prepared]:
    """Prompts and ids for every item; identical prompts collapse into one (with a warning)."""
    names: dict[Path, str] = {}
    prepared: dict[str, Prepared] = {}
    for item in plan.items:
        for target, value in item.values:
            if target.is_image and value not in names:
                names[value] = planning.upload_name(value)
        prompt = planning.apply(plan.workflow, item, names)
        key = planning.item_id(prompt)
        if key in prepared:
            log.warning("item %d is identical to item %d; it runs once", item.index, prepared[key].item.index)
            continue
        prepared[key] = Prepared(item, prompt, key)
    return list(prepared.values())


def _note(bar: Any, message: str) -> None:
    """A line for the user above the progress bar (never inside it); a log line without a bar."""
    if bar is not None and not bar.disable:
        bar.write(message)
    else:
        log.warning(message)


def _bar(total: int, enabled: bool) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="item", disable=not enabled, dynamic_ncols=True)


async def _run_one(client: ComfyClient, follower: Follower, prep: Prepared, options: Options,
                   uploaded: dict[Path, str], bar: Any) -> dict[str, Any]:
    """Upload, queue, follow, download; returns the outputs and timings (raises BatchError)."""
    timings: dict[str, float] = {}
    t = time.monotonic()
    for target, value in prep.item.values:
        if target.is_image and value not in uploaded:
            uploaded[value] = await client.upload_image(value, prep.prompt[target.node_id]["inputs"][target.input])
    timings["upload_s"] = time.monotonic() - t

    t = time.monotonic()
    prompt_id = await client.queue(prep.prompt, follower.client_id)
    timings["queue_s"] = time.monotonic() - t

    def on_progress(node: str, step: int, steps: int) -> None:
        if bar is not None:
            bar.set_postfix_str(f"item {prep.item.index} node {node} step {step}/{steps}")

    t = time.monotonic()
    entry = await follower.wait(prompt_id, on_progress, options.timeout)
    timings["run_s"] = time.monotonic() - t

    t = time.monotonic()
    outputs = []
    folder = options.out_dir / prep.id
    for node_id, node_out in (entry.get("outputs") or {}).items():
        for files in node_out.values():
            for f in files if isinstance(files, list) else []:
                if not isinstance(f, dict) or "filename" not in f:
                    continue
                if f.get("type") != "output" and not options.include_temp:
                    continue
                data = await client.view(f["filename"], f.get("subfolder", ""), f.get("type", "output"))
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / Path(f["filename"]).name
                path.write_bytes(data)
                outputs.append({"node": node_id, "filename": f["filename"], "subfolder": f.get("subfolder", ""),
                                "type": f.get("type"), "path": str(path.relative_to(options.manifest.parent)
                                                                  if path.is_relative_to(options.manifest.parent)
                                                                  else path.resolve())})
    timings["download_s"] = time.monotonic() - t
    return {"prompt_id": prompt_id, "outputs": outputs, "timings": timings}


async def run(plan: planning.Plan, options: Options, workflow_path: str = "") -> tuple[Manifest, dict[str, Any]]:
    """Run every unfinished item of `plan`; returns the manifest and this batch's summary."""
    start = time.monotonic()
    options.out_dir = options.out_dir.resolve()
    options.manifest = options.manifest.resolve()
    manifest = Manifest.load(options.manifest)
    manifest.set_header(workflow=workflow_path, server=options.server)
    prepared = prepare(plan)
    pending = [p for p in prepared if not manifest.is_done(p.id)]
    skipped = len(prepared) - len(pending)
    if skipped:
        log.info("%d of %d items already done (manifest %s); running %d", skipped, len(prepared),
                 options.manifest, len(pending))
    if pending:
        async with ComfyClient(options.server, options.retry) as client:
            await client.system_stats()  # unreachable: TransientError before any item is touched
            predicted = preflight.check(pending, await client.object_info())  # PreflightError: none would pass
            if predicted:
                log.warning("%d of %d items will be refused by the server: %s", len(predicted), len(pending),
                            preflight.format_groups(preflight.group(predicted), len(pending)))
            follower = Follower(client, uuid.uuid4().hex)
            await follower.connect()
            bar = _bar(len(pending), options.progress)
            uploaded: dict[Path, str] = {}
            try:
                for prep in pending:
                    manifest.record(prep.id, await _attempts(client, follower, prep, options, uploaded, bar))
                    if bar is not None:
                        bar.update(1)
            finally:
                if bar is not None:
                    bar.close()
                await follower.close()
    summary = manifest.summarize([p.id for p in prepared], skipped, time.monotonic() - start)
    return manifest, summary


async def _attempts(client: ComfyClient, follower: Follower, prep: Prepared, options: Options,
                    uploaded: dict[Path, str], bar: Any) -> dict[str, Any]:
    """One item, retried on transient failures only; always returns its manifest record."""
    record: dict[str, Any] = {"index": prep.item.index, "inputs": prep.item.inputs(), "status": FAILED,
                              "prompt_id": None, "outputs": [], "error": None, "attempts": 0}
    start = time.monotonic()
    for attempt in range(options.retries + 1):
        record["attempts"] = attempt + 1
        try:
            record.update(await _run_one(client, follower, prep, options, uploaded, bar), status=DONE, error=None)
            break
        except TransientError as exc:
            record["error"] = exc.details()
            _note(bar, f"item {prep.item.index}: {exc} (attempt {attempt + 1} of {options.retries + 1})")
        except BatchError as exc:
            record["error"] = exc.details()
            _note(bar, f"item {prep.item.index} failed ({exc.kind}); details in the summary")
            break
    record.setdefault("timings", {})["total_s"] = time.monotonic() - start
    record["timings"] = {k: round(v, 3) for k, v in record["timings"].items()}
    if record["status"] == DONE and options.scorer is not None:
        paths = [options.manifest.parent / o["path"] for o in record["outputs"]]
        record["scores"] = options.scorer(prep.item, paths)
    return record
