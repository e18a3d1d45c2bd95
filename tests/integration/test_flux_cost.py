"""What a patched Flux double block costs: the unpatched block plus the image attention, nothing recomputed.

One real ComfyUI `DoubleStreamBlock` (the tiny Flux's block 0) runs with the inputs
ComfyUI gives it during a forward (captured by a probe replace), once plain and once
through our `("double_block", 0)` replace, after a first forward projected the image
K/V. Every matrix product is the block's own (same ops, same count, same FLOPs); the
extra work is one attention over the 4 image tokens, a rotation back from RoPE and
one add. The image K/V are projected once per apply: a second forward runs no
projection of the adapter at all.
"""

from __future__ import annotations

import torch
from support import flux_models, unets
from support.comfy_clip import tiny_comfy_clip_vision
from support.comfy_harness import run_node
from support.op_count import OpTally


def _captured_block_args(model) -> dict:
    captured = {}

    def probe(args, extra):
        captured.update(args)
        return extra["original_block"](args)

    probed = model.clone()
    probed.set_model_patch_replace(probe, "dit", "double_block", 0)
    g = torch.Generator().manual_seed(9)
    x = torch.randn(1, 16, 8, 12, generator=g)
    positive, negative = torch.randn(2, 1, 5, flux_models.CONTEXT, generator=g)
    pooled = torch.randn(2, 1, flux_models.VEC, generator=g)
    unets.comfy_eps(probed, x, 0.7, positive, pooled[1], negative=negative, negative_pooled=pooled[0], cfg=3.0,
                    cond_extra={"guidance": 3.5})
    options = dict(captured["transformer_options"])
    options.get("patches_replace", {}).pop("dit", None)
    return {**captured, "transformer_options": options}


def test_a_patched_double_block_costs_the_block_plus_the_image_attention(comfy, model_dirs, tmp_path) -> None:
    model = flux_models.comfy_flux_model(seed=7)
    path = flux_models.save(flux_models.xlabs_state_dict(4, seed=3), model_dirs["ipadapter"] / "v1.safetensors")
    (adapter,) = run_node("LoadIPAdapter", adapter_name=path.name)
    clip_vision = tiny_comfy_clip_vision(tmp_path, hidden=64, projection_dim=768, seed=1)
    image = torch.rand(1, 96, 96, 3, generator=torch.Generator().manual_seed(0))
    (prompt,) = run_node("EncodeImagePrompt", ip_adapter=adapter, clip_vision=clip_vision, image=image,
                         fit="center crop")
    (patched,) = run_node("ApplyIPAdapter", model=model, ip_adapter=adapter, image_prompt=prompt, weight=0.8,
                          start_percent=0.0, end_percent=1.0)
    patch = patched.model_options["transformer_options"]["patches_replace"]["dit"][("double_block", 0)]
    block = model.model.diffusion_model.double_blocks[0]
    args = _captured_block_args(model)

    def original(a):
        img, txt = block(img=a["img"], txt=a["txt"], vec=a["vec"], pe=a["pe"], attn_mask=a.get("attn_mask"),
                         transformer_options=a["transformer_options"])
        return {"img": img, "txt": txt}

    def fresh() -> dict:
        return {**args, "img": args["img"].clone(), "txt": args["txt"].clone()}

    with torch.inference_mode():
        patch(fresh(), {"original_block": original})  # first call: the branch projects K/V (once per apply)
        with OpTally() as plain:
            reference = original(fresh())
        with OpTally() as ours:
            out = patch(fresh(), {"original_block": original})
        with OpTally() as again:
            patch(fresh(), {"original_block": original})

    batch, img_tokens = args["img"].shape[:2]
    heads, dim = flux_models.HEADS, flux_models.HIDDEN // flux_models.HEADS
    image_attention = 4 * batch * heads * img_tokens * 4 * dim  # QK^T and AV over 4 image tokens
    print(f"\nFlux double block (hidden {flux_models.HIDDEN}, {img_tokens} image + {args['txt'].shape[1]} text tokens, "
          f"batch {batch}): unpatched {plain.flops} FLOPs in {sum(plain.ops.values())} ops; patched {ours.flops} "
          f"FLOPs in {sum(ours.ops.values())} ops; extra {ours.flops - plain.flops} = image attention "
          f"{image_attention}; extra ops {sorted((ours.ops - plain.ops).items())}")
    assert ours.matmuls() == plain.matmuls() and ours.matmul_flops == plain.matmul_flops  # no projection redone
    assert ours.flops - plain.flops == image_attention
    assert again.ops == ours.ops  # nothing re-projected on later calls
    assert not torch.equal(out["img"], reference["img"]) and torch.equal(out["txt"], reference["txt"])
