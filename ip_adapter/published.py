"""Where each model file comes from: published name, source repository and path, target folder.

One table for every place that tells a user what to download: the model check
(`python -m ip_adapter.models`), the auto-pairing loader's error, the workflows'
`models` metadata and the README. Sources are the authors' Hugging Face repository
`h94/IP-Adapter` (SD1.5 adapters under `models/`, SDXL under `sdxl_models/`). Its two
CLIP vision towers are both called `image_encoder/model.safetensors` there, so they
must be renamed on download (`renamed` is True for them); the names below are the
ones the workflows and the README use.

Flux and SD3.5: XLabs-AI publishes both Flux adapters as `ip_adapter.safetensors`
(saved here as `flux-ip-adapter.safetensors` / `flux-ip-adapter-v2.safetensors`),
their encoder is OpenAI's CLIP ViT-L/14 (`model.safetensors`, renamed). InstantX
publishes its SD3.5-Large adapter only as a pickle (`ip-adapter.bin`, `pickle_only`):
the frontend cannot download it, the pack reads it with `torch.load(weights_only=True)`.
Its SigLIP encoder is ComfyUI's own vision-only copy (Comfy-Org/sigclip_vision_384, as
in ComfyUI's Flux Redux example); google/siglip-so400m-patch14-384 is the full original.
`gated` marks repositories that ask users to accept a licence (logged in) first.
"""

from __future__ import annotations

from dataclasses import dataclass

HF = "https://huggingface.co"


@dataclass(frozen=True)
class PublishedFile:
    """One downloadable file and where it belongs in ComfyUI's `models/` tree."""

    name: str  # the file name to save it under
    repo: str  # Hugging Face repository
    path: str  # path inside the repository
    folder: str  # ComfyUI model folder (`models/<folder>`)
    gated: bool = False  # the repository asks for a licence to be accepted (a logged-in download)
    pickle_only: bool = False  # published only as a pickle (`.bin`): the frontend offers no download

    @property
    def url(self) -> str:
        return f"{HF}/{self.repo}/resolve/main/{self.path}"

    @property
    def renamed(self) -> bool:
        """True when the file is published under another name (save it as `name`)."""
        return self.path.rsplit("/", 1)[-1] != self.name

    def how_to_get(self) -> str:
        """One sentence: which file, from where, saved as what, in which folder."""
        rename = f", saved as '{self.name}'" if self.renamed else ""
        gated = " (gated: accept its licence on Hugging Face first)" if self.gated else ""
        return f"download {self.repo} '{self.path}' ({self.url}){gated}{rename} into models/{self.folder}/"


def _h94(name: str, sdxl: bool = False) -> PublishedFile:
    return PublishedFile(name, "h94/IP-Adapter", f"{'sdxl_models' if sdxl else 'models'}/{name}", "ipadapter")


#: CLIP vision towers by the name `AdapterSpec.encoder` gives them.
ENCODERS: dict[str, PublishedFile] = {
    "ViT-H/14": PublishedFile("CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "h94/IP-Adapter",
                              "models/image_encoder/model.safetensors", "clip_vision"),
    "ViT-bigG/14": PublishedFile("CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors", "h94/IP-Adapter",
                                 "sdxl_models/image_encoder/model.safetensors", "clip_vision"),
    "ViT-L/14": PublishedFile("clip-vit-large-patch14.safetensors", "openai/clip-vit-large-patch14",
                              "model.safetensors", "clip_vision"),
    "SigLIP so400m-patch14-384": PublishedFile("sigclip_vision_patch14_384.safetensors", "Comfy-Org/sigclip_vision_384",
                                               "sigclip_vision_patch14_384.safetensors", "clip_vision"),
}

#: The adapters the authors publish as .safetensors (README "Models" table).
ADAPTERS: dict[str, PublishedFile] = {
    f.name: f for f in (
        _h94("ip-adapter_sd15.safetensors"),
        _h94("ip-adapter_sd15_light.safetensors"),
        _h94("ip-adapter_sd15_vit-G.safetensors"),
        _h94("ip-adapter-plus_sd15.safetensors"),
        _h94("ip-adapter-plus-face_sd15.safetensors"),
        _h94("ip-adapter-full-face_sd15.safetensors"),
        _h94("ip-adapter_sdxl.safetensors", sdxl=True),
        _h94("ip-adapter_sdxl_vit-h.safetensors", sdxl=True),
        _h94("ip-adapter-plus_sdxl_vit-h.safetensors", sdxl=True),
        _h94("ip-adapter-plus-face_sdxl_vit-h.safetensors", sdxl=True),
        PublishedFile("flux-ip-adapter.safetensors", "XLabs-AI/flux-ip-adapter", "ip_adapter.safetensors", "ipadapter"),
        PublishedFile("flux-ip-adapter-v2.safetensors", "XLabs-AI/flux-ip-adapter-v2", "ip_adapter.safetensors",
                      "ipadapter"),
        PublishedFile("ip-adapter_sd35_large_instantx.bin", "InstantX/SD3.5-Large-IP-Adapter", "ip-adapter.bin",
                      "ipadapter", pickle_only=True),
    )
}

#: Other files the shipped workflows load (base checkpoints, ControlNet), by the names they use.
#: The ControlNet is published as `_fp16` and saved under the name the workflow uses.
OTHER_MODELS: dict[str, PublishedFile] = {
    f.name: f for f in (
        PublishedFile("v1-5-pruned-emaonly.safetensors", "stable-diffusion-v1-5/stable-diffusion-v1-5",
                      "v1-5-pruned-emaonly.safetensors", "checkpoints"),
        PublishedFile("sd_xl_base_1.0.safetensors", "stabilityai/stable-diffusion-xl-base-1.0",
                      "sd_xl_base_1.0.safetensors", "checkpoints"),
        PublishedFile("control_v11p_sd15_canny.safetensors", "comfyanonymous/ControlNet-v1-1_fp16_safetensors",
                      "control_v11p_sd15_canny_fp16.safetensors", "controlnet"),
        # Flux dev (gated) and its text encoders; clip_l/t5xxl_fp16 are the same files SD3.5 loads.
        PublishedFile("flux1-dev.safetensors", "black-forest-labs/FLUX.1-dev", "flux1-dev.safetensors",
                      "diffusion_models", gated=True),
        PublishedFile("ae.safetensors", "black-forest-labs/FLUX.1-dev", "ae.safetensors", "vae", gated=True),
        PublishedFile("clip_l.safetensors", "comfyanonymous/flux_text_encoders", "clip_l.safetensors", "text_encoders"),
        PublishedFile("t5xxl_fp16.safetensors", "comfyanonymous/flux_text_encoders", "t5xxl_fp16.safetensors",
                      "text_encoders"),
        # SD3.5 Large (gated): the checkpoint holds no text encoders; clip_g from its text_encoders/ folder.
        PublishedFile("sd3.5_large.safetensors", "stabilityai/stable-diffusion-3.5-large", "sd3.5_large.safetensors",
                      "checkpoints", gated=True),
        PublishedFile("clip_g.safetensors", "stabilityai/stable-diffusion-3.5-large", "text_encoders/clip_g.safetensors",
                      "text_encoders", gated=True),
    )
}


def published(name: str) -> PublishedFile | None:
    """The published file saved under `name`, if this pack knows one."""
    for table in (ADAPTERS, OTHER_MODELS):
        if name in table:
            return table[name]
    return next((f for f in ENCODERS.values() if f.name == name), None)
