"""LoadIPAdapter: pick a checkpoint from models/ipadapter and load it safely."""

from __future__ import annotations

import logging

import folder_paths
from comfy_api.latest import io

from ..ip_adapter.loading import load_adapter
from ..utils.model_folders import IPADAPTER_FOLDER
from .comfy_bridge import adapter_patcher
from .types import IPAdapterSocket, LoadedAdapter

logger = logging.getLogger(__name__)


class LoadIPAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoadIPAdapter",
            display_name="Load IP-Adapter",
            category="ip_adapter",
            description="Loads an IP-Adapter checkpoint (.safetensors, or the authors' .bin read without "
                        "running code). The variant is detected from the weights, not the file name.",
            inputs=[
                io.Combo.Input("adapter_name", options=folder_paths.get_filename_list(IPADAPTER_FOLDER),
                               tooltip="A file in models/ipadapter (or a path from extra_model_paths.yaml)."),
            ],
            outputs=[IPAdapterSocket.Output(display_name="ip_adapter")],
        )

    @classmethod
    def execute(cls, adapter_name: str) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise(IPADAPTER_FOLDER, adapter_name)
        model = load_adapter(path)
        logger.info("Loaded IP-Adapter %s: %s", adapter_name, model.spec.describe())
        return io.NodeOutput(LoadedAdapter(model=model, patcher=adapter_patcher(model), name=adapter_name))
