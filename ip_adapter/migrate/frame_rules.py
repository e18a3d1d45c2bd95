"""Rules for the incumbent's per-latent and tiled nodes (IPAdapterBatch, IPAdapterTiled).

Kept apart from `rules.py` because they map onto issue 16's inputs (combine_embeds
'one per latent', encode_chunk, fit 'tiled', latent_weights_list) and each carries
its own list of what differs from the incumbent, which the report repeats.
"""

from __future__ import annotations

from typing import Any

from .engine import PLAIN_FIT, Context, Converted, Embeds, Unmappable
from .graph import Link, Node
from .rules import _model, _negative, apply, choice, linked, literal, prompt, weight
from .tables import COMBINES, ENCODE_CHUNK

PER_LATENT = "one per latent"
BATCH_NOTE = ("reference i on latent i (Encode Image Prompt combine_embeds 'one per latent'). Differs: the incumbent "
              "repeats the last reference (or drops extras) when the counts differ; here the count must be 1 or the "
              "batch size (or one per frame with context windows), otherwise Apply IP-Adapter says so")
TILED_NOTE = ("Encode Image Prompt fit 'tiled': the tiles' tokens side by side, acting on the whole image. Differs: "
              "the incumbent applies each 256 px tile only on its own area of the image (a mask per tile), cuts "
              "near-square images (ratio 0.75-1.33) into 2 x 2 tiles and longer ones into up to 4 along the long "
              "side; here square tiles of the short side cover the long side and a near-square image is one tile. "
              "Its tiles/masks outputs have no counterpart")


def batch(node: Node, ctx: Context) -> Converted:
    """IPAdapterBatch: IPAdapterAdvanced with unfold_batch (one reference per latent, no combine)."""
    from ..weighting import WEIGHT_TYPES

    weight_type = choice(node, "weight_type", WEIGHT_TYPES)
    adapter, clip = ctx.adapter(node.inputs.get("ipadapter"), node.inputs.get("clip_vision"))
    image, fit = ctx.image(node.inputs.get("image"), "image")
    embeds = Embeds(((ctx.ref(image), 1.0, fit),), PER_LATENT, adapter, clip)
    size = literal(node, "encode_batch_size", (int,))
    # 0 is the incumbent's "all images in one encoder call"; the chunk changes peak memory only, not the tokens.
    image_prompt = prompt(ctx, adapter, clip, embeds, _negative(ctx, node), "",
                          encode_chunk=size if size > 0 else ENCODE_CHUNK)
    value = node.inputs.get("weight")
    frames: dict[str, Any] = {}
    note = BATCH_NOTE
    if isinstance(value, Link):  # a list of weights (e.g. IPAdapterWeights): one per latent
        frames["latent_weights_list"] = ctx.ref(value)
        value = 1.0
        note += "; its linked weight (one per latent) goes to latent_weights_list, weight 1"
    else:
        value = weight(node, "weight")
    model = apply(ctx, node, _model(ctx, node), adapter, image_prompt, value, weight_type, **frames)
    return Converted(outputs={0: model}, compatible=frozenset({0}), note=note)


def tiled(node: Node, ctx: Context) -> Converted:
    """IPAdapterTiled -> fit 'tiled' (see TILED_NOTE for what differs)."""
    from ..weighting import WEIGHT_TYPES

    sharpening = node.inputs.get("sharpening")
    if sharpening not in (0, 0.0):
        raise Unmappable(f"sharpening {sharpening!r}: Encode Image Prompt has no sharpening; set it to 0 and convert "
                         "again, or keep this node with ComfyUI_IPAdapter_plus")
    method = choice(node, "combine_embeds", COMBINES)
    if method != "concat":
        raise Unmappable(f"combine_embeds '{method}': fit 'tiled' keeps each tile's tokens (combine 'concat' only), "
                         "while the incumbent combines the images of each tile")
    weight_type = choice(node, "weight_type", WEIGHT_TYPES)
    adapter, clip = ctx.adapter(node.inputs.get("ipadapter"), node.inputs.get("clip_vision"))
    if linked(node, "image_negative"):
        raise Unmappable("its image_negative: the incumbent pairs the whole negative image with every tile, while "
                         "fit 'tiled' tiles the negative too; connect a negative of the reference's aspect ratio to "
                         "Encode Image Prompt by hand")
    image, fit = ctx.image(node.inputs.get("image"), "image")
    if fit != PLAIN_FIT:
        raise Unmappable("its image comes from PrepImageForClipVision (already a 224 px square), which the "
                         "incumbent still cuts into 2 x 2 tiles; connect the original image and convert again")
    embeds = Embeds(((ctx.ref(image), 1.0, ("tiled", "center")),), "concat", adapter, clip)
    model = apply(ctx, node, _model(ctx, node), adapter, prompt(ctx, adapter, clip, embeds, None, ""),
                  weight(node, "weight"), weight_type)
    return Converted(outputs={0: model}, compatible=frozenset({0}), note=TILED_NOTE)
