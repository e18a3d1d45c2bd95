"""The results manifest: one JSON file, item id -> inputs, outputs, status, error, timings, scores.

Written after every item (to a temporary file, then renamed), so a batch killed at any moment
leaves a readable manifest. On the next run, items whose id is recorded as `done` and whose
output files still exist are skipped; failed and missing ones run again.

Layout::

    {"version": 1, "workflow": "...", "server": "...", "updated": "...",
     "items": {"<id>": {"index": 0, "inputs": {"Reference image.image": "refs/a.png", ...},
                         "status": "done" | "failed", "prompt_id": "...", "attempts": 1,
                         "outputs": [{"node": "12", "filename": "...", "path": "out/<id>/..."}],
                         "error": null | {"type": "validation", "message": "...", "problems": [...]},
                         "timings": {"upload_s": ..., "queue_s": ..., "run_s": ..., "download_s": ..., "total_s": ...},
                         "scores": {...}}},
     "summary": {"items": 6, "done": 5, "failed": 1, "skipped": 0, "wall_s": ...}}
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

VERSION = 1
DONE, FAILED = "done", "failed"


class Manifest:
    """The manifest file and its records."""

    def __init__(self, path: Path, data: dict[str, Any] | None = None):
        self.path = Path(path)
        self.data = data or {"version": VERSION, "items": {}}

    @classmethod
    def load(cls, path: Path) -> Manifest:
        """Read `path` if it exists (resume), else start empty."""
        path = Path(path)
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"manifest {path} is not valid JSON ({exc}); move it away to start afresh") from None
        if data.get("version") != VERSION or not isinstance(data.get("items"), dict):
            raise ValueError(f"manifest {path} has an unknown layout; move it away to start afresh")
        return cls(path, data)

    @property
    def items(self) -> dict[str, dict[str, Any]]:
        return self.data["items"]

    def is_done(self, item_id: str) -> bool:
        """Finished before, and every output file it lists is still there."""
        record = self.items.get(item_id)
        if record is None or record.get("status") != DONE:
            return False
        return all((self.path.parent / o["path"]).is_file() for o in record.get("outputs", []))

    def record(self, item_id: str, record: Mapping[str, Any]) -> None:
        self.items[item_id] = dict(record)
        self.save()

    def set_header(self, **fields: Any) -> None:
        self.data.update(fields)

    def summarize(self, ids: list[str], skipped: int, wall_s: float) -> dict[str, Any]:
        """Counts over this batch's items (`ids`), stored under "summary"."""
        status = [self.items.get(i, {}).get("status") for i in ids]
        summary = {"items": len(ids), "done": status.count(DONE), "failed": status.count(FAILED),
                   "not_run": len(ids) - status.count(DONE) - status.count(FAILED),
                   "skipped": skipped, "wall_s": round(wall_s, 3)}
        self.data["summary"] = summary
        self.save()
        return summary

    def save(self) -> None:
        self.data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        tmp.replace(self.path)
