"""python -m ip_adapter.migrate IN.json -o OUT.json [--report REPORT.json]"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import MigrationError, convert


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ip_adapter.migrate",
        description="Convert a ComfyUI_IPAdapter_plus workflow (UI or API format) to this pack's nodes.")
    parser.add_argument("input", type=Path, help="the workflow to convert (.json, UI or API format)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="where to write the converted workflow")
    parser.add_argument("--report", type=Path, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    try:
        text = args.input.read_text(encoding="utf-8")
    except OSError as exc:
        print(f"error: cannot read {args.input}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        print(f"error: {args.input} is not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}). "
              "Save the workflow from ComfyUI again (Save or Export (API)).", file=sys.stderr)
        return 2
    try:
        converted, report = convert(data)
    except MigrationError as exc:
        print(f"error: {args.input}: {exc}", file=sys.stderr)
        return 2
    args.output.write_text(json.dumps(converted, indent=2) + "\n", encoding="utf-8")
    if args.report:
        args.report.write_text(report.json() + "\n", encoding="utf-8")
    print(report.text())
    print(f"Wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
