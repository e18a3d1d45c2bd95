"""The batch tool's HTTP retries, against a real aiohttp server on loopback that fails on purpose.

(ComfyUI itself is exercised in tests/integration/test_batch_tool.py; here only the retry rules
are checked: 5xx and refused connections are retried with backoff, 4xx is final.)
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from aiohttp import web
from ipadapter_pack.comfy_batch.client import (
    BatchError,
    ComfyClient,
    Retry,
    TransientError,
)

FAST = Retry(attempts=3, first_delay=0.01, max_delay=0.02)


async def _serve(statuses: list[int]):
    """A server whose /system_stats answers the given statuses in turn, then 200."""
    calls = []

    async def handler(request: web.Request) -> web.Response:
        calls.append(request.path)
        status = statuses[len(calls) - 1] if len(calls) <= len(statuses) else 200
        return web.json_response({"calls": len(calls)}, status=status)

    app = web.Application()
    app.router.add_get("/system_stats", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"127.0.0.1:{port}", calls


@pytest.mark.parametrize("statuses, outcome", [([503, 500], 3), ([503, 503, 503], TransientError), ([404], BatchError)])
def test_5xx_is_retried_and_4xx_is_final(statuses, outcome) -> None:
    async def scenario():
        runner, address, calls = await _serve(statuses)
        try:
            async with ComfyClient(address, FAST) as client:
                return await client.system_stats(), calls
        finally:
            await runner.cleanup()

    if isinstance(outcome, int):
        body, calls = asyncio.run(scenario())
        assert body == {"calls": outcome} and len(calls) == outcome
    else:
        with pytest.raises(outcome):
            asyncio.run(scenario())


def test_refused_connection_is_retried_then_reported() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there

    async def scenario():
        async with ComfyClient(f"127.0.0.1:{port}", FAST) as client:
            await client.system_stats()

    with pytest.raises(TransientError, match=r"failed 3 times; last: ClientConnectorError"):
        asyncio.run(scenario())
