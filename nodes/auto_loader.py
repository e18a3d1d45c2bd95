"""LoadIPAdapterAndCLIPVision: pick an adapter; the CLIP vision file it needs is found by content.

The shortcut beside `Load IP-Adapter` + `Load CLIP Vision` (both keep working): every
file in `models/clip_vision` (subfolders and `extra_model_paths.yaml` entries included)
is identified from its safetensors header, whatever its name, and the one the adapter
was trained with is loaded: ViT-H/14 or ViT-bigG/14 for SD1.5/SDXL, OpenAI's ViT-L/14
for XLabs Flux, SigLIP so400m-patch14-384 for InstantX SD3.5 (any family `loading` knows).
When none fits, the error lists each file looked at, what it is, and the published file
to download and where to put it.
"""

from __future__ import annotations

import logging
import os
from typing import ClassVar

import folder_paths
from comfy_api.latest import io

from ..ip_adapter.errors import AdapterFormatError
from ..ip_adapter.loading import load_adapter
from ..ip_adapter.models import ENCODER_FOLDER, list_model_files, no_encoder_message, pick_encoder
from ..ip_adapter.probe import ProbeCache
from ..utils.model_folders import IPADAPTER_FOLDER, comfy_folders
from .comfy_bridge import adapter_patcher, load_clip_vision
from .types import IPAdapterSocket, LoadedAdapter

logger = logging.getLogger(__name__)


class LoadIPAdapterAndCLIPVision(io.ComfyNode):
    """Stateless but for `probes`, the extension's header cache (bound by `with_probes`)."""

    probes: ClassVar[ProbeCache | None] = None

    @classmethod
    def with_probes(cls, probes: ProbeCache) -> type[LoadIPAdapterAndCLIPVision]:
        """This node class bound to the extension's probe cache (a subclass; nothing global changes)."""
        return type(cls.__name__, (cls,), {"probes": probes, "__module__": cls.__module__})

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoadIPAdapterAndCLIPVision",
            display_name="Load IP-Adapter + CLIP Vision (auto)",
            category="ip_adapter",
            description="Loads an IP-Adapter and the CLIP vision model it was trained with, found among "
                        "the files in models/clip_vision by reading their tensor shapes (file names and "
                        "subfolders do not matter).",
            inputs=[
                io.Combo.Input("adapter_name", options=folder_paths.get_filename_list(IPADAPTER_FOLDER),
                               tooltip="A file in models/ipadapter (or a path from extra_model_paths.yaml)."),
            ],
            outputs=[IPAdapterSocket.Output(display_name="ip_adapter"),
                     io.ClipVision.Output(display_name="clip_vision")],
        )

    @classmethod
    def fingerprint_inputs(cls, adapter_name: str) -> object:
        """Run again when the clip_vision folder changes (a file added, replaced or removed)."""
        return tuple((path, *_stat(path)) for _, path in list_model_files(comfy_folders(ENCODER_FOLDER)))

    @classmethod
    def execute(cls, adapter_name: str) -> io.NodeOutput:
        probes = cls.probes or ProbeCache()
        path = folder_paths.get_full_path_or_raise(IPADAPTER_FOLDER, adapter_name)
        adapter = probes.probe(path)
        if adapter.kind != "adapter":
            raise AdapterFormatError(f"'{adapter_name}' in models/{IPADAPTER_FOLDER}: {adapter.what}.")
        folders = comfy_folders(ENCODER_FOLDER)
        looked_at = [probes.probe(p) for _, p in list_model_files(folders)]
        fitting = pick_encoder(adapter, looked_at)
        if not fitting:
            raise AdapterFormatError(no_encoder_message(adapter, looked_at, folders))
        model = load_adapter(path)
        clip_vision = load_clip_vision(fitting[0].path)
        logger.info("Loaded IP-Adapter %s (%s) with CLIP vision %s", adapter_name, model.spec.describe(),
                    fitting[0].path)
        loaded = LoadedAdapter(model=model, patcher=adapter_patcher(model), name=adapter_name)
        return io.NodeOutput(loaded, clip_vision)


def _stat(path: str) -> tuple[int, int]:
    try:
        stat = os.stat(path)
    except OSError:
        return (-1, -1)
    return (stat.st_size, stat.st_mtime_ns)
