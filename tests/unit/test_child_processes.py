"""A process started with `die_with_parent` ends when the process that started it is killed.

This is what keeps a killed pytest from leaving its ComfyUI server behind
(`support.comfy_server` starts the server with it). The control case shows the test
can fail: without it, the grandchild outlives its killed parent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SUPPORT = Path(__file__).resolve().parents[1]

LAUNCHER = """
import subprocess, sys, time
sys.path.insert(0, {support!r})
from support.child_processes import die_with_parent
child = subprocess.Popen(["sleep", "60"], start_new_session=True,
                         preexec_fn=die_with_parent() if {armed} else None)
print(child.pid, flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is dead, only not yet reaped
        return stat.read().split(")")[-1].split()[0] != "Z"


def _grandchild_after_killing_its_parent(armed: bool) -> tuple[int, bool]:
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER.format(support=str(SUPPORT), armed=armed)],
                                stdout=subprocess.PIPE, text=True)
    assert launcher.stdout is not None
    pid = int(launcher.stdout.readline())
    launcher.send_signal(signal.SIGKILL)  # as a CI timeout or `kill -9 pytest` would
    launcher.wait()
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pid, _alive(pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_a_child_dies_with_its_killed_parent() -> None:
    _, alive = _grandchild_after_killing_its_parent(armed=True)
    assert not alive


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_without_it_the_child_outlives_its_parent() -> None:
    pid, alive = _grandchild_after_killing_its_parent(armed=False)
    try:
        assert alive, "control: an unarmed child should survive (otherwise the test above proves nothing)"
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
