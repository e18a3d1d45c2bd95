"""ComfyUI's HTTP API (`/upload/image`, `/prompt`, `/history`, `/view`) with retries.

Transient failures (connection refused or reset, timeouts, HTTP 5xx) are retried with
exponential backoff; anything else is final. `POST /prompt` answering 400 is ComfyUI's prompt
validation: `ValidationError` keeps its `node_errors` and formats them one line per problem.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    from typing import Self  # Python 3.11+; only read by type checkers

log = logging.getLogger(__name__)


class BatchError(RuntimeError):
    """An item failed; `kind` is recorded in the manifest (validation, execution, transient, ...)."""

    kind = "error"

    def details(self) -> dict[str, Any]:
        return {"type": self.kind, "message": str(self)}


class TransientError(BatchError):
    """The server could not be reached or answered 5xx, after every retry."""

    kind = "transient"


class ValidationError(BatchError):
    """`POST /prompt` refused the prompt (HTTP 400): ComfyUI's validation, per node and input."""

    kind = "validation"

    def __init__(self, body: Mapping[str, Any]):
        self.body = dict(body)
        self.problems = validation_problems(body)
        super().__init__("; ".join(self.problems) or "prompt refused by ComfyUI")

    def details(self) -> dict[str, Any]:
        return {**super().details(), "problems": self.problems, "node_errors": self.body.get("node_errors", {})}


class ExecutionError(BatchError):
    """A node raised while the prompt ran (websocket `execution_error`, or history status error)."""

    kind = "execution"

    def __init__(self, data: Mapping[str, Any]):
        self.data = dict(data)
        node = f"node {data.get('node_id')} ({data.get('node_type')})" if data.get("node_id") else "the prompt"
        kind = data.get("exception_type", "error")
        super().__init__(f"{node} raised {kind}: {str(data.get('exception_message', '')).strip()}")

    def details(self) -> dict[str, Any]:
        keep = ("node_id", "node_type", "exception_type", "exception_message")
        return {**super().details(), **{k: self.data.get(k) for k in keep}}


def validation_problems(body: Mapping[str, Any]) -> list[str]:
    """One readable line per problem: `node 6 (LoadIPAdapter) input 'adapter_name': <message>`."""
    lines = []
    for node_id, entry in (body.get("node_errors") or {}).items():
        for err in entry.get("errors", []):
            name = (err.get("extra_info") or {}).get("input_name")
            where = f"node {node_id} ({entry.get('class_type', '?')})" + (f" input {name!r}" if name else "")
            detail = err.get("details") or ""
            lines.append(f"{where}: {err.get('message', '')}" + (f": {detail}" if detail else ""))
    error = body.get("error") or {}
    if not lines and error:
        detail = error.get("details") or ""
        lines.append(f"{error.get('message', 'invalid prompt')}" + (f": {detail}" if detail else ""))
    return lines


@dataclass
class Retry:
    """How often and how patiently transient failures are retried."""

    attempts: int = 5
    first_delay: float = 0.5
    max_delay: float = 10.0

    def delay(self, attempt: int) -> float:
        return min(self.max_delay, self.first_delay * 2**attempt)


class ComfyClient:
    """One server, one aiohttp session; use as `async with ComfyClient(...) as client`."""

    def __init__(self, server: str, retry: Retry | None = None, timeout: float = 60.0):
        self.base = server if "://" in server else f"http://{server}"
        self.base = self.base.rstrip("/")
        self.retry = retry or Retry()
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self.session = aiohttp.ClientSession(timeout=self.timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()

    @property
    def ws_url(self) -> str:
        return "ws" + self.base[len("http"):] + "/ws"

    async def _request(self, method: str, path: str, *, read: str = "json",
                       form: Callable[[], aiohttp.FormData] | None = None, **kwargs: Any) -> Any:
        """Send with retries; returns the decoded body; 400 on /prompt raises ValidationError.

        `form` builds a fresh multipart body per attempt (aiohttp consumes one when sending).
        """
        assert self.session is not None, "use 'async with ComfyClient(...)'"
        last = ""
        for attempt in range(self.retry.attempts):
            try:
                body = {"data": form()} if form else {}
                async with self.session.request(method, self.base + path, **kwargs, **body) as response:
                    if response.status >= 500:
                        last = f"HTTP {response.status}: {(await response.text())[:300]}"
                    elif response.status == 400 and path == "/prompt":
                        raise ValidationError(await response.json(content_type=None))
                    elif response.status >= 400:
                        raise BatchError(f"{method} {path}: HTTP {response.status}: {(await response.text())[:300]}")
                    elif read == "bytes":
                        return await response.read()
                    else:
                        return await response.json(content_type=None)
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if attempt + 1 < self.retry.attempts:
                log.warning("%s %s failed (%s); retrying in %.1f s", method, path, last, self.retry.delay(attempt))
                await asyncio.sleep(self.retry.delay(attempt))
        raise TransientError(f"{method} {self.base}{path} failed {self.retry.attempts} times; last: {last}")

    async def system_stats(self) -> dict[str, Any]:
        return await self._request("GET", "/system_stats")

    async def object_info(self) -> dict[str, Any]:
        """Every installed node's inputs and their options (model file lists included)."""
        return await self._request("GET", "/object_info")

    async def upload_image(self, path: Path, name: str) -> str:
        """Upload `path` into the server's input folder as `name` (overwrite: same name, same bytes)."""
        content = Path(path).read_bytes()

        def form() -> aiohttp.FormData:
            data = aiohttp.FormData()
            data.add_field("image", content, filename=name, content_type="application/octet-stream")
            data.add_field("overwrite", "true")
            return data

        body = await self._request("POST", "/upload/image", form=form)
        return f"{body['subfolder']}/{body['name']}" if body.get("subfolder") else body["name"]

    async def queue(self, prompt: Mapping[str, Any], client_id: str, extra: Mapping[str, Any] | None = None) -> str:
        body = await self._request("POST", "/prompt", json={"prompt": prompt, "client_id": client_id,
                                                            **({"extra_data": extra} if extra else {})})
        if body.get("node_errors"):
            raise ValidationError(body)
        return body["prompt_id"]

    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The finished prompt's history entry, or None while it is queued or running."""
        body = await self._request("GET", f"/history/{prompt_id}")
        return body.get(prompt_id)

    async def queued(self) -> set[str]:
        """Ids of the prompts running or waiting on the server (`GET /queue`)."""
        body = await self._request("GET", "/queue")
        return {entry[1] for key in ("queue_running", "queue_pending") for entry in body.get(key, [])}

    async def view(self, filename: str, subfolder: str, kind: str) -> bytes:
        params = {"filename": filename, "subfolder": subfolder, "type": kind}
        return await self._request("GET", "/view", params=params, read="bytes")
