"""One SD3.5 setup shared by the SD3.5 integration tests: models, adapter file, SigLIP, inputs, references.

Built once per module (ComfyUI MMDiT through its own detection, diffusers' twin with the
same weights, the adapter file in the published layout loaded by LoadIPAdapter, a tiny
SigLIP-384 ClipVisionModel). `predict` runs ComfyUI's sampling path; `reference` runs
diffusers with the adapter loaded by its own SD3 loader, per row as its pipeline would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from support import sd3_models, unets
from support.comfy_harness import run_node

DEPTH, SIGMA, CFG = 3, 0.6, 3.0


@dataclass
class SD3Case:
    diffusers: Any
    model: Any
    adapter_sd: dict
    adapter: Any
    siglip: Any
    image: torch.Tensor
    x: torch.Tensor
    text: tuple[torch.Tensor, torch.Tensor]
    pooled: tuple[torch.Tensor, torch.Tensor]
    adapter_dir: Path

    def encode(self, image: torch.Tensor | None = None, **inputs: Any) -> Any:
        (prompt,) = run_node("EncodeImagePrompt", ip_adapter=self.adapter, clip_vision=self.siglip,
                             image=self.image if image is None else image, fit="center crop", **inputs)
        return prompt

    def apply(self, prompt: Any, weight: float = 0.7, model: Any = None, adapter: Any = None, **inputs: Any) -> Any:
        inputs = {"start_percent": 0.0, "end_percent": 1.0, **inputs}
        (patched,) = run_node("ApplyIPAdapter", model=model or self.model, ip_adapter=adapter or self.adapter,
                              image_prompt=prompt, weight=weight, **inputs)
        return patched

    def predict(self, model: Any, cfg: float = CFG) -> torch.Tensor:
        """ComfyUI's guided prediction (flow: the velocity) through CFGGuider, one model call per row group."""
        return unets.comfy_eps(model, self.x, SIGMA, self.text[1], self.pooled[1], negative=self.text[0],
                               negative_pooled=self.pooled[0], cfg=cfg)

    def reference(self, cond: torch.Tensor, uncond: torch.Tensor, scales: list[float], cfg: float = CFG) -> torch.Tensor:
        """diffusers' SD3Transformer2DModel with its own IP-Adapter loader, `scales` per joint block."""
        processors = [p for name, p in self.diffusers.attn_processors.items() if name.startswith("transformer_blocks.")]
        for scale, processor in zip(scales, processors, strict=True):
            processor.scale = scale
        t = torch.tensor([SIGMA * 1000.0])
        with torch.no_grad():
            rows = [self.diffusers(hidden_states=self.x, timestep=t, encoder_hidden_states=self.text[i],
                                   pooled_projections=self.pooled[i],
                                   joint_attention_kwargs={"ip_adapter_image_embeds": feats}).sample
                    for i, feats in ((0, uncond), (1, cond))]
        return rows[0] + cfg * (rows[1] - rows[0])


def build(model_dirs: dict[str, Path], tmp_path: Path, name: str = "ip-adapter-sd35.safetensors") -> SD3Case:
    diffusers_model = sd3_models.diffusers_sd3(depth=DEPTH, seed=1)
    model = sd3_models.comfy_sd3_model(diffusers_model)
    adapter_sd = sd3_models.tiny_sd35_adapter(diffusers_model, seed=3)
    save_file(adapter_sd, str(model_dirs["ipadapter"] / name))
    sd3_models.load_into_diffusers(diffusers_model, adapter_sd, 1.0)
    (adapter,) = run_node("LoadIPAdapter", adapter_name=name)
    g = torch.Generator().manual_seed(0)
    return SD3Case(
        diffusers=diffusers_model, model=model, adapter_sd=adapter_sd, adapter=adapter,
        siglip=sd3_models.tiny_comfy_siglip(tmp_path, seed=2), image=torch.rand(1, 200, 240, 3, generator=g),
        x=torch.randn(1, 16, 16, 16, generator=g),
        text=(torch.randn(1, 5, sd3_models.TEXT_DIM, generator=g), torch.randn(1, 7, sd3_models.TEXT_DIM, generator=g)),
        pooled=(torch.randn(1, sd3_models.POOLED_DIM, generator=g), torch.randn(1, sd3_models.POOLED_DIM, generator=g)),
        adapter_dir=model_dirs["ipadapter"],
    )
