"""HTTP route `GET /ip_adapter/models` (also `/api/ip_adapter/models`): the model check as JSON.

For the frontend and for scripts: every adapter and CLIP vision file ComfyUI's folders
hold, what each is (from tensor shapes), which adapters are ready, and what is missing
with its published name, source and target folder (`ip_adapter.models.ModelReport`).
"""

from __future__ import annotations

import asyncio
import logging

from ..ip_adapter.models import ADAPTER_FOLDER, ENCODER_FOLDER, build_report
from ..ip_adapter.probe import ProbeCache
from ..utils.model_folders import comfy_folders

logger = logging.getLogger(__name__)

MODELS_ROUTE = "/ip_adapter/models"


def model_check(probes: ProbeCache) -> dict:
    """The report for ComfyUI's current folders (headers read at most once per file version)."""
    return build_report(comfy_folders(ADAPTER_FOLDER, ENCODER_FOLDER), probes).as_dict()


def register_routes(probes: ProbeCache) -> bool:
    """Add the route to the running server; False when there is none (ComfyUI used as a library)."""
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:
        return False
    server = getattr(PromptServer, "instance", None)
    if server is None:
        return False
    if any(getattr(route, "path", None) == MODELS_ROUTE for route in server.routes):
        return True

    async def models(_request: web.Request) -> web.Response:
        report = await asyncio.get_running_loop().run_in_executor(None, model_check, probes)
        return web.json_response(report)

    server.routes.get(MODELS_ROUTE)(models)
    logger.info("IP-Adapter model check at %s", MODELS_ROUTE)
    return True
