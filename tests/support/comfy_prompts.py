"""Running whole API-format prompts through ComfyUI's real executor, in-process.

`PromptRunner` keeps one `execution.PromptExecutor` across prompts (so its caches
behave as on a server) with `RecordingServer` standing in for the PromptServer.
Split from `comfy_harness`, which boots ComfyUI and loads the pack.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .comfy_harness import PromptExecutionError, PromptValidationError, booted


class RecordingServer:
    """Stands in for ``server.PromptServer``: the attributes the executor touches, and a log."""

    def __init__(self):
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.sockets_metadata: dict = {}
        self.messages: list[tuple[Any, Any]] = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass


@dataclass
class PromptResult:
    """What one ``PromptRunner.run`` produced.

    ``outputs[node_id]`` is the executor's cached output for each node of the prompt that has
    one: a list with one entry per output slot, each a list over the node's list-calls (one
    item unless lists were involved). ``executed`` lists the nodes that actually ran, in order;
    ``cached`` the nodes the executor served from its cache; ``ui`` the history ``outputs``.
    """

    prompt_id: str
    success: bool
    outputs: dict[str, list]
    ui: dict[str, Any]
    executed: list[str]
    cached: list[str]
    messages: list[tuple[Any, Any]]
    error: dict | None = None

    def output(self, node_id: str, slot: int = 0, index: int = 0):
        """Item ``index`` of output ``slot`` of node ``node_id``."""
        if node_id not in self.outputs:
            raise KeyError(f"node {node_id!r} has no cached output; it has {sorted(self.outputs)}")
        return self.outputs[node_id][slot][index]


class PromptRunner:
    """One ``execution.PromptExecutor`` kept across prompts, so its caches behave as on a server."""

    def __init__(self, cache_type: str = "CLASSIC", cache_args: Mapping[str, float] | None = None):
        comfy = booted()
        self.comfy = comfy
        self.server = RecordingServer()
        self.executor = comfy.execution.PromptExecutor(
            self.server,
            cache_type=getattr(comfy.execution.CacheType, cache_type),
            cache_args={"lru": 0, "ram": 0, **(cache_args or {})},
        )

    def validate(self, prompt: Mapping[str, Any], targets: Sequence[str] | None = None) -> list[str]:
        """Validate like ``POST /prompt`` and return the node ids to execute.

        With ``targets=None`` the executed nodes are the prompt's output nodes
        (``execution.validate_prompt``). Explicit ``targets`` may be any nodes (also
        non-output ones); each is validated with ``execution.validate_inputs``, the per-node
        check ``validate_prompt`` runs, upstream included.
        """
        return self._validate_in_place(copy.deepcopy(dict(prompt)), targets)

    def _validate_in_place(self, prompt: dict, targets: Sequence[str] | None) -> list[str]:
        """Validation converts widget values in ``prompt`` (``"0.5"`` -> 0.5), as ``POST /prompt`` does
        on the prompt it then queues."""
        execution = self.comfy.execution
        pid = "validate-" + uuid.uuid4().hex[:8]
        if targets is None:
            valid, error, good, node_errors = asyncio.run(execution.validate_prompt(pid, prompt, None))
            if not valid or node_errors:
                raise PromptValidationError(_format_validation(error, node_errors), error, node_errors)
            return list(good)

        async def check():
            validated: dict = {}
            errors = {}
            for node_id in targets:
                if node_id not in prompt:
                    errors[node_id] = [{"message": "no such node in the prompt", "details": ""}]
                    continue
                ok, reasons, _ = await execution.validate_inputs(pid, prompt, node_id, validated)
                if ok is not True:
                    errors[node_id] = reasons
            for node_id, (ok, reasons, _) in validated.items():
                if ok is not True and reasons:
                    errors.setdefault(node_id, reasons)
            return errors

        errors = asyncio.run(check())
        if errors:
            node_errors = {
                k: {"errors": v, "class_type": prompt.get(k, {}).get("class_type")}
                for k, v in errors.items()
            }
            raise PromptValidationError(_format_validation(None, node_errors), None, node_errors)
        return list(targets)

    def run(
        self,
        prompt: Mapping[str, Any],
        targets: Sequence[str] | None = None,
        *,
        raise_on_error: bool = True,
        extra_data: Mapping[str, Any] | None = None,
    ) -> PromptResult:
        """Validate ``prompt`` (API format), run it, and collect outputs and messages."""
        prompt = copy.deepcopy(dict(prompt))
        execute_outputs = self._validate_in_place(prompt, targets)
        prompt_id = str(uuid.uuid4())
        start = len(self.server.messages)
        extra = {"client_id": "harness", **(extra_data or {})}
        self.executor.execute(prompt, prompt_id, extra, execute_outputs)
        messages = self.server.messages[start:]

        executed, cached, error = [], [], None
        for event, data in messages:
            if not isinstance(data, dict) or data.get("prompt_id") != prompt_id:
                continue
            if event == "executing" and data.get("node") is not None:
                executed.append(data["node"])
            elif event == "execution_cached":
                cached.extend(data.get("nodes", []))
            elif event == "execution_error":
                error = data

        outputs = {}
        for node_id in prompt:
            entry = self.executor.caches.outputs.get(node_id)
            if entry is not None and entry.outputs is not None:
                outputs[node_id] = entry.outputs
        history = getattr(self.executor, "history_result", {}) or {}
        result = PromptResult(
            prompt_id=prompt_id,
            success=bool(self.executor.success) and error is None,
            outputs=outputs,
            ui=dict(history.get("outputs", {})),
            executed=executed,
            cached=cached,
            messages=messages,
            error=error,
        )
        if raise_on_error and not result.success:
            details = error or {}
            raise PromptExecutionError(
                "node {} ({}) failed: {}\n{}".format(
                    details.get("node_id"),
                    details.get("node_type"),
                    details.get("exception_message", "").strip(),
                    "".join(details.get("traceback", [])),
                ),
                details,
            )
        return result


def _format_validation(error, node_errors) -> str:
    lines = []
    if error:
        lines.append(f"{error.get('message', '')}: {error.get('details', '')}".strip())
    for node_id, info in (node_errors or {}).items():
        for reason in info.get("errors", []):
            lines.append(
                f"node {node_id} ({info.get('class_type')}): {reason.get('message')}: {reason.get('details')}"
            )
    return "prompt failed validation:\n" + "\n".join(lines)


_DEFAULT_RUNNER: PromptRunner | None = None


def run_prompt(
    prompt: Mapping[str, Any],
    targets: Sequence[str] | None = None,
    *,
    runner: PromptRunner | None = None,
    raise_on_error: bool = True,
) -> PromptResult:
    """Run an API-format prompt through ComfyUI's executor (a shared ``PromptRunner`` by default).

    Pass your own ``runner`` to control caching between prompts (a fresh ``PromptRunner()`` has
    empty caches).
    """
    global _DEFAULT_RUNNER
    if runner is None:
        if _DEFAULT_RUNNER is None:
            _DEFAULT_RUNNER = PromptRunner()
        runner = _DEFAULT_RUNNER
    return runner.run(prompt, targets, raise_on_error=raise_on_error)

