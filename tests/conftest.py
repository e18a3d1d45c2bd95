"""Test-wide setup: make ``import support.<module>`` work and register markers.

Only ``tests/`` goes on ``sys.path``. The repository root must not sit beside
ComfyUI's root there: this pack has ``nodes/`` and ``utils/`` packages and
ComfyUI has a top-level ``nodes.py`` and ``utils/`` package, so integration
tests load the pack the way ComfyUI does (see ``support/comfy_harness.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent

if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "integration: runs against a real ComfyUI checkout (tests/integration)"
    )
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
