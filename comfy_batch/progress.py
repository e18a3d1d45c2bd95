"""Follow one queued prompt to its end over ComfyUI's websocket (`/ws?clientId=...`).

Events used (ComfyUI 0.8.0 `server.py` / `execution.py`): `executing` (`node` None means the
prompt finished), `progress` (`value`/`max` sampler steps), `execution_success`,
`execution_error`, `execution_interrupted`. Binary frames (previews) are ignored. The history
entry (`GET /history/<id>`) is the authority on the result: the websocket only tells when to
look and what to show, and if it drops, the follower reconnects and polls the history meanwhile,
so a lost connection never loses an item.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from .client import BatchError, ComfyClient, ExecutionError, TransientError

log = logging.getLogger(__name__)

ProgressCallback = Callable[[str, int, int], None]  # (node id, step, steps)


class Follower:
    """One websocket per batch (its client id goes with every queued prompt)."""

    def __init__(self, client: ComfyClient, client_id: str, poll_every: float = 2.0):
        self.client = client
        self.client_id = client_id
        self.poll_every = poll_every
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def connect(self) -> None:
        """Open the websocket; on failure keep going by polling the history only."""
        assert self.client.session is not None
        try:
            self.ws = await self.client.session.ws_connect(
                f"{self.client.ws_url}?clientId={self.client_id}", heartbeat=30)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            log.warning("websocket unavailable (%s); following progress by polling /history", exc)
            self.ws = None

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()

    async def _event(self) -> tuple[str, dict[str, Any]] | None:
        """The next text event, or None after `poll_every` seconds without one."""
        if self.ws is None or self.ws.closed:
            await asyncio.sleep(self.poll_every)
            await self.connect()
            return None
        try:
            msg = await self.ws.receive(timeout=self.poll_every)
        except asyncio.TimeoutError:
            return None
        if msg.type == aiohttp.WSMsgType.TEXT:
            data = json.loads(msg.data)
            return data.get("type", ""), data.get("data") or {}
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            log.warning("websocket closed; reconnecting")
            self.ws = None
        return None

    async def wait(self, prompt_id: str, on_progress: ProgressCallback | None = None,
                   timeout: float = 3600.0) -> dict[str, Any]:
        """Block until `prompt_id` finished; return its history entry or raise its error."""
        deadline = time.monotonic() + timeout
        finished = False
        quiet = 0
        while time.monotonic() < deadline:
            event = await self._event()
            quiet = quiet + 1 if event is None else 0
            if quiet and quiet % 5 == 0:
                await self._check_not_lost(prompt_id)
            if event is not None and event[1].get("prompt_id") == prompt_id:
                kind, data = event
                if kind == "progress" and on_progress is not None:
                    on_progress(str(data.get("node")), int(data.get("value", 0)), int(data.get("max", 0)))
                elif kind == "execution_error":
                    raise ExecutionError(data)
                elif kind == "execution_interrupted":
                    raise BatchError(f"prompt {prompt_id} was interrupted on the server")
                finished = kind == "execution_success" or (kind == "executing" and data.get("node") is None)
                if not finished:
                    continue
            entry = await self.client.history(prompt_id)
            if entry is not None:
                return check_entry(entry)
            if finished:
                await asyncio.sleep(0.2)  # history is written just after the last event
        raise BatchError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")


    async def _check_not_lost(self, prompt_id: str) -> None:
        """A restarted server forgets its queue: neither queued nor in history means lost."""
        if prompt_id not in await self.client.queued() and await self.client.history(prompt_id) is None:
            raise TransientError(f"prompt {prompt_id} is neither queued nor finished on the server (restarted?)")


def check_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """Raise the execution error recorded in a history entry, else return it."""
    status = entry.get("status") or {}
    if status.get("status_str") == "error":
        for kind, data in status.get("messages", []):
            if kind == "execution_error":
                raise ExecutionError(data)
        raise BatchError("the prompt failed (no error message in its history)")
    return entry
