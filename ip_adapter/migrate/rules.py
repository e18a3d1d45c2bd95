"""One rule per incumbent node type: what it becomes here (see the README's mapping table).

A rule reads the old node's named inputs, adds our nodes through the context and says what
its outputs became; `Unmappable` leaves the node as it was, with the reason in the report.
"""

from __future__ import annotations

from typing import Any

from .engine import Context, Converted, Embeds, Rule, Unmappable
from .graph import Link, NewRef, Node, Ref
from .presets import PRESETS
from .tables import COMBINES, OUR_DEFAULTS, SCALINGS

#: IPAdapter (the simple node) weight types -> ours, as the incumbent translates them.
SIMPLE_WEIGHT_TYPES = {"standard": "linear", "prompt is more important": "ease out", "style transfer": "style transfer"}
#: PrepImageForClipVision's crop positions: 'pad', or a square crop where Encode Image Prompt's crop_position says.
PREP_CROPS = ("center", "top", "bottom", "left", "right", "pad")
#: Apply IP-Adapter's weight-over-steps / per-latent widgets (issue 16); their defaults keep the plain behaviour.
FRAME_WIDGETS = ("weight_schedule", "end_weight", "step_weights", "latent_weights")
WEIGHT_MAX = 3.0  # ApplyIPAdapter's weight range is [-1, 3]; the incumbent's advanced nodes go to 5
MIDDLE_NOTE = ("This pack also patches the UNet's middle block, which ComfyUI_IPAdapter_plus registers under a key "
               "ComfyUI never calls: converted graphs carry the adapter there too (README: 'Coming from "
               "ComfyUI_IPAdapter_plus').")
PLUS_UNCOND_NOTE = ("Plus/face adapters: the default unconditional tokens here encode zero *normalised* pixels (the "
                    "authors' definition), not a black image as the incumbent does; connect a black image to "
                    "negative_image to reproduce the incumbent exactly.")


def literal(node: Node, name: str, kinds: tuple[type, ...] = (str,)) -> Any:
    value = node.inputs.get(name)
    if isinstance(value, Link):
        raise Unmappable(f"its widget '{name}' is driven by a link; set a value and convert again")
    if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
        raise Unmappable(f"its widget '{name}' holds {value!r}, expected {'/'.join(k.__name__ for k in kinds)}")
    return value


def choice(node: Node, name: str, options: tuple[str, ...]) -> str:
    value = literal(node, name)
    if value not in options:
        raise Unmappable(f"its {name} '{value}' is none of {list(options)}")
    return value


def weight(node: Node, name: str) -> Any:
    value = node.inputs.get(name)
    if isinstance(value, Link):
        return value
    value = literal(node, name, (int, float))
    if not -1.0 <= value <= WEIGHT_MAX:
        raise Unmappable(f"its {name} {value} is outside this pack's range [-1, {WEIGHT_MAX:g}]; lower it to "
                         f"{WEIGHT_MAX:g} or chain two applies")
    return float(value)


def number(node: Node, name: str) -> Any:
    value = node.inputs.get(name)
    return value if isinstance(value, Link) else float(literal(node, name, (int, float)))


def linked(node: Node, name: str) -> Link | None:
    value = node.inputs.get(name)
    return value if isinstance(value, Link) else None


#: File name parts of adapters this pack does not load (FaceID needs InsightFace; Kolors is not supported).
UNSUPPORTED_FILES = ("faceid", "kolors", "portrait")


def model_loader(node: Node, ctx: Context) -> Converted:
    name = literal(node, "ipadapter_file")
    if any(part in name.lower() for part in UNSUPPORTED_FILES):
        raise Unmappable(f"'{name}' looks like a FaceID/Kolors adapter, which this pack does not load")
    adapter = ctx.add("LoadIPAdapter", "loader", adapter_name=name)
    return Converted(outputs={0: adapter}, adapter=adapter)


def unified_loader(node: Node, ctx: Context) -> Converted:
    preset = choice(node, "preset", tuple(PRESETS))
    model = linked(node, "model")
    if model is None:
        raise Unmappable("its model input is not connected")
    base, how = ctx.base(model)
    files = PRESETS[preset].get(base)
    if files is None:
        raise Unmappable(f"preset '{preset}' has no {base.upper()} file (the incumbent refuses it too)")
    adapter = ctx.add("LoadIPAdapter", "loader", adapter_name=files[0])
    clip = ctx.add("CLIPVisionLoader", "clip_vision", clip_name=files[1])
    note = f"preset '{preset}' -> {files[0]} + {files[1]} ({base.upper()}, {how})"
    if linked(node, "ipadapter"):
        note += "; its ipadapter input (a pipeline to reuse) is not needed here"
    return Converted(outputs={0: ctx.ref(model), 1: adapter}, compatible=frozenset({0}), adapter=adapter,
                     clip_vision=clip, note=note)


def image_count(ctx: Context, ref: Ref) -> int | None:
    """How many images an IMAGE source holds, where the graph says (LoadImage: 1)."""
    if isinstance(ref, NewRef):
        new = next((n for n in ctx.pending if n.key == ref.key), None)
        if new is None or new.type != "ImageBatch":
            return None
        parts = [image_count(ctx, new.inputs[k]) for k in ("image1", "image2")]
        return None if None in parts else sum(parts)  # type: ignore[arg-type]
    node = ctx.source_node(ref)
    if node.type == "LoadImage":
        return 1
    if node.type == "ImageBatch":
        parts = [image_count(ctx, node.inputs[k]) if isinstance(node.inputs.get(k), Link) else None
                 for k in ("image1", "image2")]
        return None if None in parts else sum(parts)  # type: ignore[arg-type]
    return None


def prompt(ctx: Context, adapter: Ref, clip: Ref, embeds: Embeds, negative: Ref | None, suffix: str,
           encode_chunk: int | None = None) -> NewRef:
    """EncodeImagePrompt for the images of `embeds` (batched with ImageBatch when several)."""
    fits = {fit for _, _, fit in embeds.images}
    if len(fits) > 1:
        raise Unmappable(f"its images are prepared differently ({sorted(fits)}); one encoder takes one fit")
    image = embeds.images[0][0]
    for i, (other, _, _) in enumerate(embeds.images[1:], start=1):
        image = ctx.add("ImageBatch", f"{suffix}batch{i}", image1=image, image2=other)
    weights = [w for _, w, _ in embeds.images]
    text = ""
    if any(w != 1.0 for w in weights):
        counts = [image_count(ctx, ref) for ref, _, _ in embeds.images]
        if None in counts:
            raise Unmappable("an encoder weight other than 1 applies to an image batch of unknown size; "
                             "Encode Image Prompt's image_weights needs one number per image")
        text = ", ".join(f"{w:g}" for w, n in zip(weights, counts) for _ in range(n))  # type: ignore[arg-type]
    fit, crop_position = fits.pop()
    inputs: dict[str, Any] = dict(ip_adapter=adapter, clip_vision=clip, image=image, fit=fit,
                                  combine_embeds=embeds.method, image_weights=text, crop_position=crop_position,
                                  encode_chunk=OUR_DEFAULTS["encode_chunk"] if encode_chunk is None else encode_chunk)
    if negative is not None:
        inputs["negative_image"] = negative
    return ctx.add("EncodeImagePrompt", f"{suffix}encode", **inputs)


def apply(ctx: Context, node: Node, model: Any, adapter: Ref, image_prompt: Ref, weight_value: Any,
          weight_type: str, suffix: str = "", **frames: Any) -> NewRef:
    """ApplyIPAdapter with the node's window, scaling and mask; `frames` overrides issue 16's widget defaults."""
    inputs: dict[str, Any] = dict(
        model=model, ip_adapter=adapter, image_prompt=image_prompt, weight=weight_value,
        start_percent=number(node, "start_at"), end_percent=number(node, "end_at"), weight_type=weight_type,
        embeds_scaling=choice(node, "embeds_scaling", SCALINGS) if "embeds_scaling" in node.inputs else "V only",
        layer_weights="", **{name: OUR_DEFAULTS[name] for name in FRAME_WIDGETS}, **frames)
    if linked(node, "attn_mask"):
        inputs["attn_mask"] = ctx.ref(node.inputs["attn_mask"])
    return ctx.add("ApplyIPAdapter", f"{suffix}apply", **inputs)


def _image_embeds(ctx: Context, node: Node, name: str, adapter: Ref, clip: Ref, method: str) -> Embeds:
    image, fit = ctx.image(node.inputs.get(name), name)
    return Embeds(((ctx.ref(image), 1.0, fit),), method, adapter, clip)


def _negative(ctx: Context, node: Node) -> Ref | None:
    if not linked(node, "image_negative"):
        return None
    return ctx.ref(ctx.image(node.inputs["image_negative"], "image_negative")[0])


def _model(ctx: Context, node: Node) -> Any:
    if not linked(node, "model"):
        raise Unmappable("its model input is not connected")
    return ctx.ref(node.inputs["model"])


def simple(node: Node, ctx: Context) -> Converted:
    weight_type = SIMPLE_WEIGHT_TYPES[choice(node, "weight_type", tuple(SIMPLE_WEIGHT_TYPES))]
    adapter, clip = ctx.adapter(node.inputs.get("ipadapter"), None)
    embeds = _image_embeds(ctx, node, "image", adapter, clip, "concat")
    model = apply(ctx, node, _model(ctx, node), adapter, prompt(ctx, adapter, clip, embeds, None, ""),
                  weight(node, "weight"), weight_type)
    return Converted(outputs={0: model}, compatible=frozenset({0}))


def advanced(node: Node, ctx: Context) -> Converted:
    from ..weighting import WEIGHT_TYPES

    weight_type = choice(node, "weight_type", WEIGHT_TYPES)
    adapter, clip = ctx.adapter(node.inputs.get("ipadapter"), node.inputs.get("clip_vision"))
    embeds = _image_embeds(ctx, node, "image", adapter, clip, choice(node, "combine_embeds", COMBINES))
    image_prompt = prompt(ctx, adapter, clip, embeds, _negative(ctx, node), "")
    model = apply(ctx, node, _model(ctx, node), adapter, image_prompt, weight(node, "weight"), weight_type)
    return Converted(outputs={0: model}, compatible=frozenset({0}))


def style_composition(node: Node, ctx: Context) -> Converted:
    base, how = ctx.base(node.inputs.get("model"))
    if base != "sdxl":
        raise Unmappable(f"the incumbent runs style + composition on SDXL only, and this model is SD1.5 ({how})")
    adapter, clip = ctx.adapter(node.inputs.get("ipadapter"), node.inputs.get("clip_vision"))
    method = choice(node, "combine_embeds", COMBINES)
    negative = _negative(ctx, node)
    expand = literal(node, "expand_style", (bool,))
    style = prompt(ctx, adapter, clip, _image_embeds(ctx, node, "image_style", adapter, clip, method), negative,
                   "style.")
    composition = prompt(ctx, adapter, clip, _image_embeds(ctx, node, "image_composition", adapter, clip, method),
                         negative, "composition.")
    model = apply(ctx, node, _model(ctx, node), adapter, style, weight(node, "weight_style"),
                  "strong style transfer" if expand else "style transfer", "style.")
    model = apply(ctx, node, model, adapter, composition, weight(node, "weight_composition"), "composition",
                  "composition.")
    return Converted(outputs={0: model}, compatible=frozenset({0}),
                     note="two applies: style image on the style blocks, composition image on the composition block")


def encoder(node: Node, ctx: Context) -> Converted:
    if linked(node, "mask"):
        raise Unmappable("masked CLIP vision encoding (its mask input) has no counterpart here; crop the reference "
                         "to the masked area instead")
    adapter, clip = ctx.adapter(node.inputs.get("ipadapter"), node.inputs.get("clip_vision"))
    image, fit = ctx.image(node.inputs.get("image"), "image")
    value = node.inputs.get("weight")
    if isinstance(value, Link):
        raise Unmappable("its weight is driven by a link; image_weights here is text, set a value and convert again")
    pos = Embeds(((ctx.ref(image), float(literal(node, "weight", (int, float))), fit),), "concat", adapter, clip)
    neg = Embeds(pos.images, "concat", adapter, clip, negative=True)
    return Converted(embeds={0: pos, 1: neg}, note="folded into the Encode Image Prompt its embeds reach")


def combine_embeds(node: Node, ctx: Context) -> Converted:
    method = literal(node, "method")
    if method not in COMBINES:
        raise Unmappable(f"combine method '{method}' has no counterpart (here: {list(COMBINES)})")
    parts = [ctx.embeds(node.inputs[f"embed{i}"], f"embed{i}") for i in range(1, 6) if linked(node, f"embed{i}")]
    if not parts:
        raise Unmappable("embed1 is not connected")
    if any(p.negative for p in parts) or len({(p.adapter, p.clip_vision) for p in parts}) > 1:
        raise Unmappable("it combines embeds of different adapters or an encoder's neg_embed")
    inner = {p.method for p in parts if len(p.images) > 1}
    if inner - {"concat"}:  # a concat of concats is still one concat of all images
        raise Unmappable("it combines embeds that were already combined by another method")
    images = tuple(i for p in parts for i in p.images)
    return Converted(embeds={0: Embeds(images, method, parts[0].adapter, parts[0].clip_vision)},
                     note="folded into the Encode Image Prompt its embeds reach")


def embeds_apply(node: Node, ctx: Context) -> Converted:
    from ..weighting import WEIGHT_TYPES

    pos = ctx.embeds(node.inputs.get("pos_embed"), "pos_embed")
    adapter, clip = ctx.adapter(node.inputs.get("ipadapter"), node.inputs.get("clip_vision"))
    if (adapter, clip) != (pos.adapter, pos.clip_vision):
        raise Unmappable("its pos_embed was encoded with another adapter or CLIP vision than it applies")
    negative = None
    if linked(node, "neg_embed"):
        neg = ctx.embeds(node.inputs["neg_embed"], "neg_embed")
        if not neg.negative:  # another encoder's pos_embed, i.e. a negative image
            if len(neg.images) != 1 or neg.images[0][1] != 1.0:
                raise Unmappable("its neg_embed combines several images or has a weight; use one negative image")
            negative = neg.images[0][0]
    if pos.negative:
        raise Unmappable("its pos_embed is an encoder's neg_embed output")
    image_prompt = prompt(ctx, adapter, clip, pos, negative, "")
    model = apply(ctx, node, _model(ctx, node), adapter, image_prompt, weight(node, "weight"),
                  choice(node, "weight_type", WEIGHT_TYPES))
    return Converted(outputs={0: model}, compatible=frozenset({0}))


def prep_image(node: Node, ctx: Context) -> Converted:
    crop = literal(node, "crop_position")
    sharpening = node.inputs.get("sharpening")
    if crop not in PREP_CROPS or sharpening not in (0, 0.0):
        raise Unmappable(f"crop_position '{crop}' / sharpening {sharpening!r}: Encode Image Prompt has no sharpening; "
                         "keep this node (it still works with ComfyUI_IPAdapter_plus) or set sharpening to 0")
    image = linked(node, "image")
    if image is None:
        raise Unmappable("its image input is not connected")
    fit = ("pad", "center") if crop == "pad" else ("center crop", crop)
    where = "fit 'pad'" if crop == "pad" else f"fit 'center crop', crop_position '{crop}'"
    return Converted(outputs={0: ctx.ref(image)}, fit=fit,
                     note=f"folded into Encode Image Prompt's {where} (its resize to 224 px is the encoder's own)")


RULES: dict[str, Rule] = {
    "IPAdapterModelLoader": model_loader,
    "IPAdapterUnifiedLoader": unified_loader,
    "IPAdapter": simple,
    "IPAdapterAdvanced": advanced,
    "IPAdapterStyleComposition": style_composition,
    "IPAdapterEncoder": encoder,
    "IPAdapterCombineEmbeds": combine_embeds,
    "IPAdapterEmbeds": embeds_apply,
    "PrepImageForClipVision": prep_image,
}
