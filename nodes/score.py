"""LoadCLIPScorer and ScoreImagePrompt: CLIP-I / CLIP-T adherence scores inside a graph.

Thin glue over `ip_adapter.scoring` (the math, the checkpoint reading and the
table live there and run without ComfyUI). ComfyUI only provides the file list,
the devices and memory management: the scorer's weights sit in a ModelPatcher so
`load_model_gpu` moves them in (and other models out) as for any text encoder.
Register the nodes with `SCORING_NODES`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import folder_paths
import numpy as np
import torch
from comfy_api.latest import io, ui
from torch import Tensor

from ..ip_adapter.scoring.metrics import PAIRINGS
from ..ip_adapter.scoring.report import Row, format_table, plot_scores, to_dict
from ..ip_adapter.scoring.scorer import ACTIVATIONS, CLIPScorer, load_scorer
from ..utils.images import check_image_batch
from ..utils.model_folders import CLIP_SCORING_FOLDER
from . import comfy_bridge

logger = logging.getLogger(__name__)

#: Distinct from every other pack's type names, so links to foreign CLIP types never validate.
ScorerSocket = io.Custom("IP_ADAPTER_CLIP_SCORER")

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True, eq=False)
class LoadedScorer:
    """What travels on IP_ADAPTER_CLIP_SCORER: the scorer, its ModelPatcher and the file name."""

    scorer: CLIPScorer
    patcher: Any  # comfy.model_patcher.ModelPatcher
    name: str


def _dtype(precision: str) -> torch.dtype:
    """"auto": fp16 where ComfyUI would run fp16 on the text-encoder device, else fp32 (CPU)."""
    if precision != "auto":
        return _DTYPES[precision]
    return comfy_bridge.text_encoder_half_dtype()


def _image(image: Tensor | None, what: str) -> Tensor:
    return check_image_batch(image, "ScoreImagePrompt", what)


class LoadCLIPScorer(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoadCLIPScorer",
            display_name="Load CLIP Scorer",
            category="ip_adapter/scoring",
            description="Loads a full OpenCLIP model (image and text towers) from models/clip_scoring for CLIP-I / "
                        "CLIP-T scoring. The architecture (ViT-L/14, ViT-H/14, ViT-bigG/14 ...) is read from the "
                        "weights; nothing is downloaded.",
            inputs=[
                io.Combo.Input("model_name", options=folder_paths.get_filename_list(CLIP_SCORING_FOLDER),
                               tooltip="A full OpenCLIP checkpoint (open_clip_pytorch_model.bin or "
                                       "open_clip_model.safetensors) in models/clip_scoring. CLIP *vision* files "
                                       "lack the text tower and are refused."),
                io.Combo.Input("activation", options=list(ACTIVATIONS), default="auto",
                               tooltip="quick_gelu for OpenAI's CLIP weights (the IP-Adapter paper scored with "
                                       "OpenAI ViT-L/14), gelu for LAION/OpenCLIP-trained ones. auto: quick_gelu "
                                       "only if the file carries OpenAI's extra entries."),
                io.Combo.Input("precision", options=list(PRECISIONS), default="auto",
                               tooltip="Weights' dtype. auto: fp16 on a GPU that supports it, fp32 on CPU."),
            ],
            outputs=[ScorerSocket.Output(display_name="clip_scorer")],
        )

    @classmethod
    def execute(cls, model_name: str, activation: str, precision: str) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise(CLIP_SCORING_FOLDER, model_name)
        scorer = load_scorer(path, activation=activation, dtype=_dtype(precision))
        patcher = comfy_bridge.text_encoder_patcher(scorer.model)
        logger.info("Loaded CLIP scorer %s: %s", model_name, scorer.describe())
        return io.NodeOutput(LoadedScorer(scorer=scorer, patcher=patcher, name=model_name))


class ScoreImagePrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ScoreImagePrompt",
            display_name="Score Image Prompt (CLIP-I / CLIP-T)",
            category="ip_adapter/scoring",
            description="How closely generated images follow the image prompt (CLIP-I: cosine of CLIP image "
                        "embeddings) and the caption (CLIP-T: CLIPScore, 2.5 * max(cos, 0)), as in the IP-Adapter "
                        "paper. Use it to pick a weight that keeps the subject without copying the layout.",
            inputs=[
                ScorerSocket.Input("clip_scorer", tooltip="From Load CLIP Scorer."),
                io.Image.Input("images", tooltip="The generated images to score (a batch: one row each)."),
                io.Image.Input("reference", tooltip="The image prompt(s) the images should follow."),
                io.String.Input("text", multiline=True, default="", optional=True,
                                tooltip="Caption for CLIP-T (the prompt or a description of the reference). "
                                        "Empty: CLIP-T is skipped and its mean output is NaN."),
                io.Combo.Input("pairing", options=list(PAIRINGS), default=PAIRINGS[0],
                               tooltip="With several reference images: average each image's CLIP-I over all "
                                       "references, or compare image i with reference i (equal batch sizes)."),
            ],
            outputs=[
                io.Float.Output(display_name="clip_i_mean", tooltip="Mean CLIP-I over the images."),
                io.Float.Output(display_name="clip_t_mean", tooltip="Mean CLIP-T over the images; NaN without text."),
                io.String.Output(display_name="scores_json",
                                 tooltip="Per-image CLIP-I and CLIP-T, the means and the definitions, as JSON."),
                io.String.Output(display_name="table", tooltip="The same as a readable text table."),
                io.Image.Output(display_name="plot", tooltip="A small chart of the scores per image."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, clip_scorer: LoadedScorer, images: Tensor, reference: Tensor, text: str = "",
                pairing: str = PAIRINGS[0]) -> io.NodeOutput:
        images, reference = _image(images, "images"), _image(reference, "reference")
        if pairing == PAIRINGS[1] and reference.shape[0] not in (1, images.shape[0]):
            raise ValueError(f"ScoreImagePrompt: 'one to one' pairing needs 1 reference or one per image; got "
                             f"{reference.shape[0]} references for {images.shape[0]} images.")
        comfy_bridge.load_to_device(clip_scorer.patcher)
        scores = clip_scorer.scorer.score(images, reference, text or "", pairing)
        clip_t = scores.clip_t.tolist() if scores.clip_t is not None else [None] * len(scores.clip_i)
        rows = [Row(label=str(i + 1), clip_i=ci, clip_t=ct) for i, (ci, ct) in enumerate(zip(scores.clip_i.tolist(),
                                                                                            clip_t))]
        table = format_table(rows, title=f"{clip_scorer.name}: {clip_scorer.scorer.describe()}")
        data = to_dict(rows, model=clip_scorer.name, architecture=clip_scorer.scorer.architecture.name,
                       text=text or None, pairing=pairing)
        plot = torch.from_numpy(np.asarray(plot_scores(rows), dtype=np.float32) / 255.0)[None]
        return io.NodeOutput(scores.clip_i_mean, scores.clip_t_mean, json.dumps(data), table, plot,
                             ui=ui.PreviewText(table))


SCORING_NODES: list[type[io.ComfyNode]] = [LoadCLIPScorer, ScoreImagePrompt]
