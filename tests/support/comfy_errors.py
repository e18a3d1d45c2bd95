"""The errors the ComfyUI test harness raises; each message says what went wrong and what to do."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ComfyHarnessError(RuntimeError):
    """The harness could not boot ComfyUI or load the pack; the message says why."""


class PackImportError(ComfyHarnessError):
    """``nodes.load_custom_node`` refused the pack; carries ComfyUI's logged reason."""


class PromptValidationError(ComfyHarnessError):
    """ComfyUI's validator rejected a prompt (what ``POST /prompt`` answers with HTTP 400)."""

    def __init__(self, message: str, error: Any, node_errors: Mapping[str, Any]):
        super().__init__(message)
        self.error = error
        self.node_errors = dict(node_errors)


class PromptExecutionError(ComfyHarnessError):
    """A node raised while the executor ran a prompt (the websocket ``execution_error``)."""

    def __init__(self, message: str, details: Mapping[str, Any]):
        super().__init__(message)
        self.details = dict(details)
