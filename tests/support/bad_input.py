"""A served executor for the bad-input catalogue (tests/integration/test_bad_input*.py).

`Served` keeps one `PromptRunner` (one `execution.PromptExecutor`, as a server
keeps one) for a whole test module and sends it API-format prompts built from
value nodes (tiny SD1.5/SDXL UNets, a tiny ViT-H-shaped CLIP vision tower,
images, conditioning, an empty latent) and the pack's nodes up to a KSampler.
After each bad prompt a test calls `still_serves`: a good prompt runs on the
same executor and must give exactly what a fresh executor gives, so a failure
left nothing behind (no half-applied patch, no broken cache). Its sampler seed
alternates between two values, each prompt's sampler differs from the previous
prompt's, and the executor drops cached outputs a prompt does not use: the
sampler really runs every time (asserted), while the fresh executor's result
for each seed is computed once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import checkpoints, unets
from .comfy_clip import tiny_comfy_clip_vision
from .comfy_harness import PromptValidationError
from .comfy_prompts import PromptRunner
from .value_nodes import ValueNodes

GOOD_ADAPTER = "good_sd15.safetensors"
SEEDS = (101, 202)
LOADER, ENCODER, APPLY, SAMPLER = "7", "8", "9", "10"


@dataclass
class Served:
    """One executor for many prompts, plus the value nodes its prompts start from."""

    runner: PromptRunner
    values: ValueNodes
    references: dict[int, torch.Tensor] = field(default_factory=dict)
    seed: int = SEEDS[0]

    @classmethod
    def start(cls, comfy: Any, folder: Path) -> Served:
        values = ValueNodes(comfy)
        g = torch.Generator().manual_seed(0)
        values.add("IPABadSD15", "MODEL", unets.comfy_sd15_model(seed=1))
        values.add("IPABadClipH", "CLIP_VISION", tiny_comfy_clip_vision(folder, hidden=1280, projection_dim=1024))
        values.add("IPABadImage", "IMAGE", torch.rand(1, 64, 64, 3, generator=g))
        values.add("IPABadPositive", "CONDITIONING", [[torch.randn(1, 77, 768, generator=g), {}]])
        values.add("IPABadNegative", "CONDITIONING", [[torch.randn(1, 77, 768, generator=g), {}]])
        values.add("IPABadLatent", "LATENT", {"samples": torch.zeros(1, 4, 8, 8)})
        return cls(runner=PromptRunner(), values=values)

    def image(self, name: str, pixels: torch.Tensor) -> str:
        """Register an IMAGE value node (use a new name per image: the executor caches by name)."""
        return self.values.add(f"IPABadImage_{name}", "IMAGE", pixels)

    def refused(self, prompt: dict, node_type: str, pattern: str, error: str = "ValueError") -> dict:
        """Run `prompt`; it must fail in `node_type` with a message matching `pattern`.

        `error` is the exception class name: the pack's own errors (AdapterFormatError,
        ImagePromptError, both ValueErrors), never a torch RuntimeError from deep inside.
        """
        result = self.runner.run(prompt, targets=[SAMPLER], raise_on_error=False)
        assert not result.success, f"{node_type} accepted a bad input"
        details = result.error or {}
        assert details.get("node_type") == node_type, details
        assert details.get("exception_type", "").rsplit(".", 1)[-1] == error, details
        message = details.get("exception_message", "")
        assert re.search(pattern, message, flags=re.DOTALL), f"message {message!r} does not match {pattern!r}"
        return details

    def rejected(self, prompt: dict, node_id: str, pattern: str) -> PromptValidationError:
        """`prompt` must fail validation (HTTP 400 on a server) at `node_id`, with `pattern` in the reasons."""
        try:
            self.runner.validate(prompt, [SAMPLER])
        except PromptValidationError as exc:
            assert node_id in exc.node_errors, exc.node_errors
            reasons = " | ".join(f"{r.get('message')}: {r.get('details')}" for r in exc.node_errors[node_id]["errors"])
            assert re.search(pattern, reasons), f"reasons {reasons!r} do not match {pattern!r}"
            return exc
        raise AssertionError("the prompt passed validation")

    def still_serves(self, model_dirs: dict[str, Path]) -> None:
        """A good prompt runs on this executor and matches a fresh executor's result exactly."""
        write_adapter(model_dirs, GOOD_ADAPTER, "ip-adapter_sd15")
        self.seed = SEEDS[1] if self.seed == SEEDS[0] else SEEDS[0]
        prompt = graph(seed=self.seed)
        served = self.runner.run(prompt, targets=[SAMPLER])
        assert SAMPLER in served.executed, "the sampler was served from the cache; the check proves nothing"
        if self.seed not in self.references:
            self.references[self.seed] = PromptRunner().run(prompt, targets=[SAMPLER]).output(SAMPLER)["samples"]
        samples = served.output(SAMPLER)["samples"]
        assert torch.isfinite(samples).all()
        assert torch.equal(samples, self.references[self.seed])

    def close(self) -> None:
        self.values.close()


def write_adapter(model_dirs: dict[str, Path], name: str, variant: str) -> str:
    path = model_dirs["ipadapter"] / name
    if not path.exists():
        checkpoints.save_safetensors(checkpoints.ip_adapter_state_dict(variant, "small"), path)
    return name


def graph(adapter: str = GOOD_ADAPTER, *, image: str = "IPABadImage", model: str = "IPABadSD15",
          clip: str = "IPABadClipH", fit: str = "center crop", weight: Any = 1.0, start: Any = 0.0,
          end: Any = 1.0, seed: int = 0) -> dict:
    """Load -> Encode -> Apply -> KSampler (2 steps on an 8x8 latent), in API format."""
    def value(class_type: str) -> dict:
        return {"class_type": class_type, "inputs": {}}

    return {
        "1": value(model), "2": value(clip), "3": value(image),
        "4": value("IPABadPositive"), "5": value("IPABadNegative"), "6": value("IPABadLatent"),
        LOADER: {"class_type": "LoadIPAdapter", "inputs": {"adapter_name": adapter}},
        ENCODER: {"class_type": "EncodeImagePrompt",
                  "inputs": {"ip_adapter": [LOADER, 0], "clip_vision": ["2", 0], "image": ["3", 0], "fit": fit}},
        APPLY: {"class_type": "ApplyIPAdapter",
                "inputs": {"model": ["1", 0], "ip_adapter": [LOADER, 0], "image_prompt": [ENCODER, 0],
                           "weight": weight, "start_percent": start, "end_percent": end}},
        SAMPLER: {"class_type": "KSampler",
                  "inputs": {"model": [APPLY, 0], "seed": seed, "steps": 2, "cfg": 4.0, "sampler_name": "euler",
                             "scheduler": "normal", "positive": ["4", 0], "negative": ["5", 0],
                             "latent_image": ["6", 0], "denoise": 1.0}},
    }
