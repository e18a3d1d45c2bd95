"""Our loader against open_clip's own: same file, same embeddings; the activation choice; the tokenizer."""

from __future__ import annotations

import json

import pytest
import torch
from ipadapter_pack.ip_adapter.scoring.checkpoint import ScorerFormatError
from ipadapter_pack.ip_adapter.scoring.preprocess import clip_preprocess
from ipadapter_pack.ip_adapter.scoring.scorer import load_scorer, resolve_activation
from support import openclip_checkpoints as oc

TINY = {"tiny": oc.TINY_CONFIG}
CAPTIONS = ["a photo of a dog", "a red car on a street at night", ""]


def _open_clip_reference(path, quick_gelu: bool = False) -> torch.nn.Module:
    """open_clip's route: its CLIP class from the config, weights via its `load_checkpoint`."""
    import open_clip
    from open_clip.model import CLIP

    model = CLIP(**oc.TINY_CONFIG, quick_gelu=quick_gelu)
    open_clip.load_checkpoint(model, str(path))
    # Frozen like the scorer's: frozen weights let torch take MultiheadAttention's fused fast path,
    # which differs from the unfused one by ~2e-7; like for like, the embeddings are bit-identical.
    return model.eval().requires_grad_(False)


def _images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 48, 40, 3, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("fmt", ["tiny.safetensors", "tiny.bin", "tiny_train.pt"])
@pytest.mark.parametrize("quick_gelu", [False, True])
def test_embeddings_equal_open_clips_own_loader(tmp_path, fmt: str, quick_gelu: bool) -> None:
    path, original = oc.write_tiny(tmp_path / fmt, seed=5, quick_gelu=quick_gelu, wrapped=fmt.endswith(".pt"))
    scorer = load_scorer(path, activation="quick_gelu" if quick_gelu else "gelu", architectures=TINY)
    assert scorer.quick_gelu is quick_gelu
    original.requires_grad_(False)
    reference = _open_clip_reference(path, quick_gelu) if not fmt.endswith(".pt") else original
    images = _images()
    pixels = clip_preprocess(images, scorer.image_size)
    tokens = scorer.tokenize(CAPTIONS)
    with torch.no_grad():
        ref_img = reference.encode_image(pixels, normalize=True)
        ref_txt = reference.encode_text(tokens, normalize=True)
        orig_img = original.encode_image(pixels, normalize=True)
    ours_img, ours_txt = scorer.encode_images(images), scorer.encode_texts(CAPTIONS)
    assert ours_img.shape == (3, 32) and ours_txt.shape == (3, 32)
    assert (ours_img - ref_img).abs().max().item() == 0.0
    assert (ours_txt - ref_txt).abs().max().item() == 0.0
    assert (ours_img - orig_img).abs().max().item() == 0.0


def test_activation_changes_embeddings_and_auto_reads_openai_markers(tmp_path) -> None:
    path, model = oc.write_tiny(tmp_path / "tiny.safetensors", seed=1)
    gelu = load_scorer(path, activation="auto", architectures=TINY)
    quick = load_scorer(path, activation="quick_gelu", architectures=TINY)
    assert not gelu.quick_gelu and quick.quick_gelu
    images = _images(2)
    assert (gelu.encode_images(images) - quick.encode_images(images)).abs().max() > 1e-3

    sd = dict(model.state_dict(), input_resolution=torch.tensor(32), context_length=torch.tensor(77),
              vocab_size=torch.tensor(49408))  # what OpenAI's own checkpoints carry
    openai_path = oc.write_checkpoint(sd, tmp_path / "openai_style.bin")
    auto = load_scorer(openai_path, activation="auto", architectures=TINY)
    assert auto.quick_gelu
    assert torch.equal(auto.encode_images(images), quick.encode_images(images))
    assert not resolve_activation("gelu", sd)


def test_auto_follows_a_supplied_configs_quick_gelu(tmp_path) -> None:
    path, _ = oc.write_tiny(tmp_path / "tiny.safetensors", seed=1, quick_gelu=True)
    configs = {"tiny-openai": {**oc.TINY_CONFIG, "quick_gelu": True}}
    scorer = load_scorer(path, architectures=configs)
    assert scorer.quick_gelu and scorer.architecture.name == "tiny-openai"
    assert not load_scorer(path, activation="gelu", architectures=configs).quick_gelu  # explicit wins


def test_a_config_beside_the_checkpoint_is_used(tmp_path) -> None:
    """`<name>.json` next to `<name>.safetensors` (e.g. the repo's open_clip_config.json, renamed)."""
    path, _ = oc.write_tiny(tmp_path / "tiny-openai.safetensors", seed=1)
    (tmp_path / "tiny-openai.json").write_text(json.dumps({"model_cfg": {**oc.TINY_CONFIG, "quick_gelu": True}}))
    scorer = load_scorer(path)
    assert scorer.architecture.name == "tiny-openai" and scorer.quick_gelu
    (tmp_path / "tiny-openai.json").write_text("{not json")
    with pytest.raises(ScorerFormatError, match="Could not read the model config"):
        load_scorer(path)
    (tmp_path / "tiny-openai.json").write_text(json.dumps({"embed_dim": 32}))
    with pytest.raises(ScorerFormatError, match="not an open_clip model config"):
        load_scorer(path)


def test_half_precision_stays_close_to_fp32(tmp_path) -> None:
    path, _ = oc.write_tiny(tmp_path / "tiny.safetensors", seed=3)
    full = load_scorer(path, architectures=TINY)
    half = load_scorer(path, architectures=TINY, dtype=torch.bfloat16)
    assert half.model.visual.conv1.weight.dtype == torch.bfloat16
    images = _images(2)
    cos = (full.encode_images(images) * half.encode_images(images)).sum(-1)
    assert cos.min().item() > 0.99


def test_tokenizer_is_open_clips_bundled_bpe_and_needs_no_download(monkeypatch, tmp_path) -> None:
    import open_clip

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    path, _ = oc.write_tiny(tmp_path / "tiny.safetensors")
    scorer = load_scorer(path, architectures=TINY)
    assert type(scorer.tokenizer).__name__ == "SimpleTokenizer"
    assert scorer.tokenizer.vocab_size == 49408
    long = " ".join(["word"] * 200)
    theirs = open_clip.get_tokenizer("ViT-L-14")(CAPTIONS + [long])
    assert torch.equal(scorer.tokenize(CAPTIONS + [long]), theirs)
    assert scorer.tokenize([long])[0, -1].item() == scorer.tokenizer.eot_token_id  # truncated, EOT kept
