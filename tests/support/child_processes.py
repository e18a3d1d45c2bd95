"""Child processes that die with the test run, even when pytest itself is killed.

Why: a fixture's teardown stops the ComfyUI server it started, but a pytest that is
killed (SIGKILL, a CI timeout, a closed terminal) runs no teardown, and the server
(in its own session, so that it can be stopped as a group) lived on, holding a port,
memory and a temporary folder. On Linux the kernel can send a signal to a child when
its parent dies (`prctl(PR_SET_PDEATHSIG)`); `die_with_parent` asks for SIGKILL.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

#: prctl option number (linux/prctl.h).
PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` for `subprocess.Popen`: the child gets SIGKILL when this process dies (Linux; None elsewhere)."""
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()

    def arm() -> None:  # runs in the child, between fork and exec
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return arm
