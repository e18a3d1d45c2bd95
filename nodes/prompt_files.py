"""SaveImagePrompt / LoadImagePrompt: reuse an encoded style without CLIP vision or the images.

Folders follow ComfyUI's own Save Latent / Load Latent (and ComfyUI_IPAdapter_plus's
embeds nodes): saving writes under the output directory with a filename prefix;
loading lists prompt files in the input directory, plus those in the output
directory (as `name [output]`, ComfyUI's annotated-path convention), so a prompt
saved by one run can be loaded by the next without copying files around.
Only files named `*.image_prompt.safetensors` are listed.
"""

from __future__ import annotations

import hashlib
import logging
import os

import folder_paths
from comfy_api.latest import io

from ..ip_adapter.errors import ImagePromptError
from ..ip_adapter.prompt import ImagePrompt
from ..ip_adapter.prompt_file import SUFFIX, load_image_prompt, save_image_prompt
from ..ip_adapter.sd3.prompt import SD3ImagePrompt
from ..ip_adapter.sd3.prompt_file import is_sd3_prompt_file, load_sd3_prompt, save_sd3_prompt
from .types import ImagePromptSocket

logger = logging.getLogger(__name__)
OUTPUT_TAG = " [output]"


def _prompt_files(root: str) -> list[str]:
    """Saved prompts under `root`, as paths relative to it (forward slashes)."""
    found = []
    for folder, _, files in os.walk(root, followlinks=True):
        for name in files:
            if name.lower().endswith(SUFFIX):
                found.append(os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/"))
    return sorted(found)


def _resolve(choice: str) -> str:
    """The file a combo entry names, refusing anything outside the input/output directories."""
    if choice.endswith(OUTPUT_TAG):
        root, name = folder_paths.get_output_directory(), choice[: -len(OUTPUT_TAG)]
    else:
        root, name = folder_paths.get_input_directory(), choice
    root = os.path.realpath(root)
    path = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath((root, path)) != root:
        raise ImagePromptError(f"LoadImagePrompt: '{choice}' is outside the input and output folders.")
    if not os.path.isfile(path):
        raise ImagePromptError(
            f"LoadImagePrompt: '{choice}' not found. Put *{SUFFIX} files in ComfyUI's input folder, or save "
            "one with Save Image Prompt."
        )
    return path


class SaveImagePrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SaveImagePrompt",
            display_name="IP-Adapter Save Image Prompt",
            category="ip_adapter",
            description=f"Saves an image prompt (its tokens and the adapter they belong to) as *{SUFFIX} in the "
                        "output folder. Load Image Prompt reads it back without CLIP vision or the images.",
            inputs=[
                ImagePromptSocket.Input("image_prompt", tooltip="From Encode Image Prompt (or Load Image Prompt)."),
                io.String.Input("filename_prefix", default="ip_adapter/image_prompt",
                                tooltip="Where in the output folder to save, as for Save Image: 'folder/name' "
                                        f"gives output/folder/name_00001_{SUFFIX}."),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, image_prompt: ImagePrompt | SD3ImagePrompt, filename_prefix: str) -> io.NodeOutput:
        if not isinstance(image_prompt, (ImagePrompt, SD3ImagePrompt)):  # e.g. the regions of IP-Adapter Region nodes
            raise ImagePromptError("SaveImagePrompt: 'image_prompt' is a chain of IP-Adapter Region nodes, not one "
                                   "image prompt; save each region's Encode Image Prompt output instead.")
        output_dir = folder_paths.get_output_directory()
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, output_dir)
        name = f"{filename}_{counter:05}_{SUFFIX}"
        sd3 = isinstance(image_prompt, SD3ImagePrompt)
        (save_sd3_prompt if sd3 else save_image_prompt)(image_prompt, os.path.join(folder, name))
        described = image_prompt.shape.describe() if sd3 else image_prompt.spec.describe()
        logger.info("Saved image prompt %s (%s)", os.path.join(subfolder, name), described)
        saved = {"filename": name, "subfolder": subfolder, "type": "output"}
        return io.NodeOutput(ui={"image_prompts": [saved]})


class LoadImagePrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        files = _prompt_files(folder_paths.get_input_directory())
        files += [name + OUTPUT_TAG for name in _prompt_files(folder_paths.get_output_directory())]
        return io.Schema(
            node_id="LoadImagePrompt",
            display_name="IP-Adapter Load Image Prompt",
            category="ip_adapter",
            description="Loads an image prompt saved by Save Image Prompt; it applies exactly like the prompt "
                        "that was saved, with the same adapter.",
            inputs=[
                io.Combo.Input("prompt_file", options=files,
                               tooltip=f"A *{SUFFIX} file in ComfyUI's input folder, or one saved to the output "
                                       "folder (marked [output])."),
            ],
            outputs=[ImagePromptSocket.Output(display_name="image_prompt")],
        )

    @classmethod
    def execute(cls, prompt_file: str) -> io.NodeOutput:
        path = _resolve(prompt_file)
        return io.NodeOutput(load_sd3_prompt(path) if is_sd3_prompt_file(path) else load_image_prompt(path))

    @classmethod
    def fingerprint_inputs(cls, prompt_file: str) -> str:
        """Re-run when the file's bytes change (as ComfyUI's Load Latent does)."""
        try:
            with open(_resolve(prompt_file), "rb") as handle:
                return hashlib.sha256(handle.read()).hexdigest()
        except (ImagePromptError, OSError):
            return ""  # execute reports the problem
