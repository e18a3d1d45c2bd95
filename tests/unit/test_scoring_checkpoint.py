"""Reading OpenCLIP checkpoints, naming the architecture from shapes, refusing the wrong files by name."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from ipadapter_pack.ip_adapter.scoring.checkpoint import (
    KNOWN_ARCHITECTURES,
    ScorerFormatError,
    infer_architecture,
    read_state_dict,
    signature,
)
from ipadapter_pack.ip_adapter.scoring.scorer import load_scorer, scorer_from_state_dict
from support import clip_vision_files
from support import openclip_checkpoints as oc

TINY = {"tiny": oc.TINY_CONFIG}
# Heads per tower of the published models (not visible in any tensor; the config must supply them).
HEADS = {"ViT-L-14": (16, 12), "ViT-H-14": (16, 16), "ViT-bigG-14": (16, 20)}


@pytest.mark.parametrize("name", sorted(oc.NAMED_DIMS))
def test_named_architectures_from_published_shapes(name: str) -> None:
    """Shapes written down from the model cards (no open_clip involved) name the right config."""
    arch = infer_architecture(oc.openclip_shapes(oc.NAMED_DIMS[name]), name)
    assert arch.name == name
    embed, vw, vl, vmlp, patch, px, tw, tl, tmlp, ctx, vocab = oc.NAMED_DIMS[name]
    sig = arch.signature
    assert (sig.embed_dim, sig.vision_width, sig.vision_layers, sig.vision_mlp, sig.patch_size, sig.image_size) == \
        (embed, vw, vl, vmlp, patch, px)
    assert (sig.text_width, sig.text_layers, sig.text_mlp, sig.context_length, sig.vocab_size) == \
        (tw, tl, tmlp, ctx, vocab)


@pytest.mark.parametrize("name", KNOWN_ARCHITECTURES)
def test_every_known_architecture_from_an_open_clip_model_on_meta(name: str) -> None:
    import open_clip
    from open_clip.model import CLIP

    with torch.device("meta"):
        model = CLIP(**open_clip.get_model_config(name))
    assert infer_architecture(model.state_dict(), name).name == name


@pytest.mark.parametrize("name", sorted(HEADS))
def test_full_size_scorer_builds_on_meta_with_the_configs_heads(name: str) -> None:
    """The whole build path at real size without allocating: meta tensors in, meta model out."""
    sd = oc.meta_state_dict(oc.openclip_shapes(oc.NAMED_DIMS[name]))
    scorer = scorer_from_state_dict(sd, name)
    assert scorer.architecture.name == name
    vision_heads, text_heads = HEADS[name]
    assert scorer.model.visual.transformer.resblocks[0].attn.num_heads == vision_heads
    assert scorer.model.transformer.resblocks[0].attn.num_heads == text_heads
    assert scorer.image_size == 224 and scorer.tokenizer.context_length == 77


def test_vision_only_openclip_file_is_refused_naming_the_text_tower() -> None:
    """The ViT-H image encoder that IP-Adapter users have (OpenCLIP layout) is not a scoring model."""
    shapes = clip_vision_files.clip_vision_shapes(clip_vision_files.VIT_H_CONFIG, "openclip")
    with pytest.raises(ScorerFormatError, match="no text tower") as info:
        infer_architecture(shapes, "CLIP-ViT-H-14.safetensors")
    message = str(info.value)
    for key in ("token_embedding.weight", "text_projection", "ln_final.weight", "transformer.resblocks.N"):
        assert key in message
    assert "CLIP-ViT-H-14.safetensors" in message


def test_hf_transformers_layout_is_refused_with_the_layout_named() -> None:
    shapes = clip_vision_files.clip_vision_shapes(clip_vision_files.VIT_H_CONFIG, "hf")
    with pytest.raises(ScorerFormatError, match="Hugging Face transformers layout"):
        infer_architecture(shapes, "model.safetensors")


def test_incomplete_text_tower_names_the_missing_keys() -> None:
    shapes = oc.openclip_shapes(oc.NAMED_DIMS["ViT-L-14"])
    del shapes["text_projection"]
    with pytest.raises(ScorerFormatError, match="incomplete text tower: missing text_projection"):
        infer_architecture(shapes)


def test_missing_image_tower_is_named() -> None:
    shapes = {k: s for k, s in oc.openclip_shapes(oc.NAMED_DIMS["ViT-L-14"]).items() if not k.startswith("visual.")}
    with pytest.raises(ScorerFormatError, match="no complete image tower: missing visual.class_embedding"):
        infer_architecture(shapes)


def test_unknown_architecture_lists_what_was_found_and_what_is_known() -> None:
    embed, vw, vl, *rest = oc.NAMED_DIMS["ViT-L-14"]
    shapes = oc.openclip_shapes((embed, vw, vl - 2, *rest))  # a 22-layer ViT-L
    with pytest.raises(ScorerFormatError, match="unknown CLIP architecture") as info:
        infer_architecture(shapes, "odd.safetensors")
    message = str(info.value)
    assert "image tower 22 layers x 1024 wide" in message
    assert "ViT-L-14: 24x1024 image" in message and "ViT-bigG-14" in message


def test_tiny_models_are_only_known_when_their_config_is_given() -> None:
    shapes = {k: tuple(v.shape) for k, v in oc.tiny_model().state_dict().items()}
    with pytest.raises(ScorerFormatError, match="unknown CLIP architecture"):
        infer_architecture(shapes)
    assert infer_architecture(shapes, extra=TINY).name == "tiny"


def test_mismatched_projections_are_reported() -> None:
    shapes = oc.openclip_shapes(oc.NAMED_DIMS["ViT-L-14"])
    shapes["text_projection"] = (768, 512)
    with pytest.raises(ScorerFormatError, match="768-wide embeddings and the text projection 512"):
        signature(shapes)


@pytest.mark.parametrize("fmt", ["model.safetensors", "model.bin", "epoch_3.pt"])
def test_file_formats_load_the_same_weights(tmp_path, fmt: str) -> None:
    path, model = oc.write_tiny(tmp_path / fmt, seed=2, wrapped=fmt.endswith(".pt"))
    sd = read_state_dict(path)
    expected = model.state_dict()
    assert set(sd) == set(expected)
    assert all(torch.equal(sd[k], expected[k]) for k in sd)


def test_unexpected_and_missing_keys_are_named(tmp_path) -> None:
    sd = oc.tiny_model().state_dict()
    sd["visual.extra_head.weight"] = torch.zeros(2)
    del sd["visual.ln_post.bias"]
    path = oc.write_checkpoint(sd, tmp_path / "odd.safetensors")
    with pytest.raises(ScorerFormatError) as info:
        load_scorer(path, architectures=TINY)
    assert "missing visual.ln_post.bias" in str(info.value)
    assert "unexpected visual.extra_head.weight" in str(info.value)


def test_wrong_vocabulary_is_refused_because_the_tokenizer_would_not_fit(tmp_path) -> None:
    config = oc.tiny_config(text_cfg__vocab_size=1000)
    path, _ = oc.write_tiny(tmp_path / "small_vocab.safetensors", config)
    with pytest.raises(ScorerFormatError, match="1000-token vocabulary"):
        load_scorer(path, architectures={"small-vocab": config})


def test_pickle_that_runs_code_is_refused(tmp_path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.bin"
    with open(path, "wb") as f:
        pickle.dump({"visual.proj": Evil()}, f, protocol=2)
    with pytest.raises(ScorerFormatError, match="Refused to load 'evil.bin'"):
        read_state_dict(path)


@pytest.mark.filterwarnings("ignore:.*jit.*:FutureWarning", "ignore:.*TorchScript archive.*:UserWarning")
def test_torchscript_archives_are_refused(tmp_path) -> None:
    """OpenAI's original checkpoints are TorchScript; weights-only loading cannot read them, by design."""
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    path = tmp_path / "ViT-L-14.pt"
    scripted.save(str(path))
    with pytest.raises(ScorerFormatError, match="'ViT-L-14.pt' is a TorchScript archive"):
        read_state_dict(path)


def test_truncated_and_missing_files_are_reported(tmp_path) -> None:
    path, _ = oc.write_tiny(tmp_path / "t.safetensors")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ScorerFormatError, match="Could not read CLIP scoring checkpoint 't.safetensors'"):
        read_state_dict(path)
    with pytest.raises(ScorerFormatError, match="not found"):
        read_state_dict(tmp_path / "nope.safetensors")
