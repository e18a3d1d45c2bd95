"""ComfyUI glue: one module per node, plus `comfy_bridge` for every ComfyUI internal call."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from ..ip_adapter.probe import ProbeCache
from .apply import ApplyIPAdapter
from .auto_loader import LoadIPAdapterAndCLIPVision
from .encode import EncodeImagePrompt
from .from_clip_vision import ImagePromptFromCLIPVision
from .loader import LoadIPAdapter
from .prompt_files import LoadImagePrompt, SaveImagePrompt
from .regional import IPAdapterRegion
from .score import SCORING_NODES

NODES: list[type[io.ComfyNode]] = [
    LoadIPAdapter, EncodeImagePrompt, ApplyIPAdapter, ImagePromptFromCLIPVision, SaveImagePrompt, LoadImagePrompt,
    *SCORING_NODES, IPAdapterRegion,
]


class IPAdapterExtension(ComfyExtension):
    """Lists the pack's nodes, registering (and creating) its model folders first.

    ComfyUI 0.8.0 builds each node's schema (and so the adapter file list) right
    after `get_node_list`, and does not call `on_load`; the folder is registered here.
    The extension owns the header cache that the auto-pairing loader and the
    `/ip_adapter/models` route share.
    """

    def __init__(self) -> None:
        self.probes = ProbeCache()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        import folder_paths

        from ..utils.model_folders import (
            CLIP_SCORING_FOLDER,
            IPADAPTER_FOLDER,
            register_model_folder,
        )

        for name in (IPADAPTER_FOLDER, CLIP_SCORING_FOLDER):
            register_model_folder(folder_paths, name)
        from .routes import register_routes

        register_routes(self.probes)
        return [*NODES, LoadIPAdapterAndCLIPVision.with_probes(self.probes)]
