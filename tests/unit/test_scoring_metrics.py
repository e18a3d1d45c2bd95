"""CLIP-I and CLIP-T: definitions, batch shapes, pairing, and that each tower does its part."""

from __future__ import annotations

import math

import pytest
import torch
from ipadapter_pack.ip_adapter.scoring import metrics
from ipadapter_pack.ip_adapter.scoring.scorer import load_scorer
from support import openclip_checkpoints as oc

TINY = {"tiny": oc.TINY_CONFIG}


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    path, _ = oc.write_tiny(tmp_path_factory.mktemp("clip") / "tiny.safetensors", seed=7)
    return load_scorer(path, architectures=TINY)


def _images(n: int, seed: int = 0, size: tuple[int, int] = (40, 56)) -> torch.Tensor:
    return torch.rand(n, *size, 3, generator=torch.Generator().manual_seed(seed))


def test_cosine_matrix_shapes_and_scale_invariance() -> None:
    a, b = torch.randn(3, 8), torch.randn(5, 8)
    sims = metrics.cosine_matrix(a, b)
    assert sims.shape == (3, 5)
    assert torch.allclose(sims, metrics.cosine_matrix(7 * a, 0.1 * b), atol=1e-6)
    with pytest.raises(ValueError, match="expected"):
        metrics.cosine_matrix(a, torch.randn(5, 4))


def test_clip_i_pairings() -> None:
    g, r = torch.randn(4, 8), torch.randn(4, 8)
    sims = metrics.cosine_matrix(g, r)
    assert torch.allclose(metrics.clip_i(g, r[:1]), sims[:, 0])
    assert torch.allclose(metrics.clip_i(g, r), sims.mean(1))
    assert torch.allclose(metrics.clip_i(g, r, "one to one"), sims.diagonal())
    assert torch.allclose(metrics.clip_i(g, r[:1], "one to one"), sims[:, 0])  # one reference: shared
    with pytest.raises(ValueError, match="as many references as images"):
        metrics.clip_i(g, r[:2], "one to one")
    with pytest.raises(ValueError, match="unknown pairing"):
        metrics.clip_i(g, r, "closest")


def test_clip_t_is_clipscore_with_w_2_5() -> None:
    """Hessel et al. 2021, Eq. 1: w * max(cos, 0), w = 2.5."""
    text = torch.tensor([[1.0, 0.0]])
    angles = torch.tensor([0.0, math.pi / 3, math.pi / 2, 2 * math.pi / 3])
    images = torch.stack([angles.cos(), angles.sin()], dim=1)
    expected = torch.tensor([2.5, 1.25, 0.0, 0.0])  # cos = 1, 0.5, 0, -0.5 (clamped)
    assert torch.allclose(metrics.clip_t(images, text), expected, atol=1e-6)
    assert metrics.CLIPSCORE_W == 2.5
    per_image = metrics.clip_t(images, images.flip(0))
    assert per_image.shape == (4,)
    with pytest.raises(ValueError, match="1 caption or one per image"):
        metrics.clip_t(images, images[:2])


def test_mean_or_nan() -> None:
    assert metrics.mean_or_nan(torch.tensor([0.5, 1.0])) == 0.75
    assert math.isnan(metrics.mean_or_nan(None))


def test_identical_images_give_clip_i_of_one(scorer) -> None:
    images = _images(3)
    scores = scorer.score(images, images, pairing="one to one")
    assert torch.allclose(scores.clip_i, torch.ones(3), atol=1e-6)
    same = scorer.score(images[1:2], images[1:2])
    assert abs(same.clip_i_mean - 1.0) < 1e-6
    other = scorer.score(images[:1], _images(1, seed=9))
    assert other.clip_i_mean < 0.9999


def test_batch_shapes(scorer) -> None:
    images, refs = _images(5, seed=1), _images(2, seed=2, size=(64, 48))
    scores = scorer.score(images, refs, "a cat")
    assert scores.clip_i.shape == (5,) and scores.clip_t.shape == (5,)
    assert scores.clip_i.dtype == torch.float32
    assert scorer.encode_images(images, batch_size=2).shape == (5, 32)
    assert torch.allclose(scorer.encode_images(images, batch_size=2), scorer.encode_images(images), atol=1e-6)
    assert scorer.encode_texts(["a", "b", "c"]).shape == (3, 32)
    no_text = scorer.score(images, refs, "  ")
    assert no_text.clip_t is None and math.isnan(no_text.clip_t_mean)
    assert torch.equal(no_text.clip_i, scores.clip_i)


def test_clip_t_follows_the_text_through_the_text_tower(scorer) -> None:
    images = _images(4, seed=3)
    captions = ["a dog", "a red car at night", "two people on a beach", "an abstract painting", "zebra"]
    # The raw cosines (before CLIPScore's clamp) differ per caption ...
    image_emb = scorer.encode_images(images)
    cosines = [metrics.cosine_matrix(image_emb, scorer.encode_texts([c]))[:, 0] for c in captions]
    assert all((cosines[0] - c).abs().max() > 1e-4 for c in cosines[1:])
    # ... and CLIP-T is exactly 2.5 * max(cos, 0) of them, so it changes with the text.
    t_scores = [scorer.score(images, images[:1], c).clip_t for c in captions]
    for cos, t in zip(cosines, t_scores):
        assert torch.allclose(t, 2.5 * cos.clamp(min=0), atol=1e-6)
    assert len({round(float(t.sum()), 6) for t in t_scores}) > 1


def test_text_tower_weights_move_clip_t_but_not_clip_i(tmp_path) -> None:
    path, model = oc.write_tiny(tmp_path / "a.safetensors", seed=4)
    sd = model.state_dict()
    sd["text_projection"] = sd["text_projection"] + 0.5 * torch.randn_like(sd["text_projection"])
    other = oc.write_checkpoint(sd, tmp_path / "b.safetensors")
    first, second = load_scorer(path, architectures=TINY), load_scorer(other, architectures=TINY)
    images = _images(3, seed=5)
    texts = ["a dog", "a house"]
    assert torch.equal(first.encode_images(images), second.encode_images(images))
    assert (first.encode_texts(texts) - second.encode_texts(texts)).abs().max() > 1e-3
