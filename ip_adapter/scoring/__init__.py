"""Image-prompt adherence scoring (CLIP-I, CLIP-T) with a full OpenCLIP model; pure torch.

`checkpoint` reads a local OpenCLIP file and names its architecture from shapes,
`scorer` builds open_clip's model for it (never downloading anything), `preprocess`
is CLIP's image transform for IMAGE tensors, `metrics` holds the two definitions,
`report` the table / JSON / plot, and `cli` the folder-scoring command
(`python -m ip_adapter.scoring`). Nothing here imports ComfyUI; open_clip is
imported only when a model or tokenizer is built.
"""

from .checkpoint import (
    KNOWN_ARCHITECTURES,
    Architecture,
    ScorerFormatError,
    Signature,
    infer_architecture,
)
from .metrics import CLIPSCORE_W, PAIRINGS, clip_i, clip_t
from .scorer import ACTIVATIONS, CLIPScorer, Scores, load_scorer, scorer_from_state_dict

__all__ = [
    "ACTIVATIONS",
    "CLIPSCORE_W",
    "KNOWN_ARCHITECTURES",
    "PAIRINGS",
    "Architecture",
    "CLIPScorer",
    "ScorerFormatError",
    "Scores",
    "Signature",
    "clip_i",
    "clip_t",
    "infer_architecture",
    "load_scorer",
    "scorer_from_state_dict",
]
