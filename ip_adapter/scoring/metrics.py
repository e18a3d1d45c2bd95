"""Image-prompt adherence metrics on CLIP embeddings, as small pure functions.

* CLIP-I: cosine similarity between the CLIP image embeddings of a generated image
  and of the image prompt (IP-Adapter, Ye et al. 2023, Sec. 4.2; introduced as a
  subject-fidelity metric in DreamBooth, Ruiz et al. 2023).
* CLIP-T: CLIPScore of a generated image against a caption (Hessel et al. 2021,
  "CLIPScore: A Reference-free Evaluation Metric for Image Captioning", Eq. 1):
  w * max(cos(image, text), 0) with w = 2.5, the definition IP-Adapter reports.

Embeddings are [N, D] rows; they are L2-normalised here, so callers may pass raw
projections. Everything is computed in float32.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: CLIPScore's rescaling weight w (Hessel et al. 2021): stretches typical cosines (~0.2-0.4) towards 0..1.
CLIPSCORE_W = 2.5

#: How generated images are compared with several reference images.
PAIRINGS = ("mean over references", "one to one")


def cosine_matrix(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity of every row of a [N, D] with every row of b [M, D] -> [N, M]."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected [N, D] and [M, D] embeddings, got {tuple(a.shape)} and {tuple(b.shape)}")
    a = torch.nn.functional.normalize(a.float(), dim=-1)
    b = torch.nn.functional.normalize(b.float(), dim=-1)
    return a @ b.T


def clip_i(generated: Tensor, references: Tensor, pairing: str = PAIRINGS[0]) -> Tensor:
    """CLIP-I per generated image: cos(E_img(generated), E_img(reference)) -> [G].

    generated [G, D], references [R, D]. One reference: every image against it.
    Several: "mean over references" averages each image's cosine over all of them;
    "one to one" pairs image i with reference i (R must equal G).
    """
    sims = cosine_matrix(generated, references)  # [G, R]
    if references.shape[0] == 1 or pairing == PAIRINGS[0]:
        return sims.mean(dim=1)
    if pairing != PAIRINGS[1]:
        raise ValueError(f"unknown pairing {pairing!r}; expected one of {PAIRINGS}")
    if references.shape[0] != generated.shape[0]:
        raise ValueError(f"'one to one' needs as many references as images, got {references.shape[0]} "
                         f"references for {generated.shape[0]} images")
    return sims.diagonal()


def clip_t(images: Tensor, texts: Tensor, w: float = CLIPSCORE_W) -> Tensor:
    """CLIP-T per image: CLIPScore = w * max(cos(E_img, E_txt), 0) -> [G].

    images [G, D]; texts [1, D] (one caption for all) or [G, D] (one each).
    """
    if texts.shape[0] not in (1, images.shape[0]):
        raise ValueError(f"give 1 caption or one per image: {texts.shape[0]} captions for {images.shape[0]} images")
    sims = cosine_matrix(images, texts)  # [G, T]
    cos = sims[:, 0] if texts.shape[0] == 1 else sims.diagonal()
    return w * cos.clamp(min=0.0)


def mean_or_nan(values: Tensor | None) -> float:
    """The mean as a Python float; NaN when there is nothing to average (e.g. CLIP-T without text)."""
    if values is None or values.numel() == 0:
        return float("nan")
    return float(values.float().mean())
