"""Node tables: the incumbent's nodes (ComfyUI_IPAdapter_plus, last release Feb 2025) and ours.

Facts read from the incumbent's `IPAdapterPlus.py` (node ids, input names and order, widget
defaults); no code of it is used. A UI-format workflow stores widget values by position, so
the order of `widgets` is the order the frontend saves them (required, then optional).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NodeTable:
    """One node type's inputs and outputs, as the UI format needs them."""

    widgets: tuple[str, ...]
    #: (name, type, optional) of the inputs that take links, in schema order.
    sockets: tuple[tuple[str, str, bool], ...]
    #: (name, type) per output slot.
    outputs: tuple[tuple[str, str], ...]
    size: tuple[int, int] = (315, 100)
    #: Trailing widgets that later releases added, with their defaults: a file saved before them
    #: has fewer widgets_values, and the frontend gives the missing widgets these values.
    later: tuple[tuple[str, object], ...] = ()


SCALINGS = ("V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty")
COMBINES = ("concat", "add", "subtract", "average", "norm average")

#: The incumbent's node types this converter reads.
INCUMBENT: dict[str, NodeTable] = {
    "IPAdapterModelLoader": NodeTable(("ipadapter_file",), (), (("IPADAPTER", "IPADAPTER"),)),
    "IPAdapterUnifiedLoader": NodeTable(
        ("preset",), (("model", "MODEL", False), ("ipadapter", "IPADAPTER", True)),
        (("model", "MODEL"), ("ipadapter", "IPADAPTER"))),
    "IPAdapter": NodeTable(
        ("weight", "start_at", "end_at", "weight_type"),
        (("model", "MODEL", False), ("ipadapter", "IPADAPTER", False), ("image", "IMAGE", False),
         ("attn_mask", "MASK", True)),
        (("MODEL", "MODEL"),), later=(("weight_type", "standard"),)),
    "IPAdapterAdvanced": NodeTable(
        ("weight", "weight_type", "combine_embeds", "start_at", "end_at", "embeds_scaling"),
        (("model", "MODEL", False), ("ipadapter", "IPADAPTER", False), ("image", "IMAGE", False),
         ("image_negative", "IMAGE", True), ("attn_mask", "MASK", True), ("clip_vision", "CLIP_VISION", True)),
        (("MODEL", "MODEL"),), later=(("embeds_scaling", "V only"),)),
    "IPAdapterBatch": NodeTable(
        ("weight", "weight_type", "start_at", "end_at", "embeds_scaling", "encode_batch_size"),
        (("model", "MODEL", False), ("ipadapter", "IPADAPTER", False), ("image", "IMAGE", False),
         ("image_negative", "IMAGE", True), ("attn_mask", "MASK", True), ("clip_vision", "CLIP_VISION", True)),
        (("MODEL", "MODEL"),), later=(("embeds_scaling", "V only"), ("encode_batch_size", 0))),
    "IPAdapterTiled": NodeTable(
        ("weight", "weight_type", "combine_embeds", "start_at", "end_at", "sharpening", "embeds_scaling"),
        (("model", "MODEL", False), ("ipadapter", "IPADAPTER", False), ("image", "IMAGE", False),
         ("image_negative", "IMAGE", True), ("attn_mask", "MASK", True), ("clip_vision", "CLIP_VISION", True)),
        (("MODEL", "MODEL"), ("tiles", "IMAGE"), ("masks", "MASK")), later=(("embeds_scaling", "V only"),)),
    "IPAdapterStyleComposition": NodeTable(
        ("weight_style", "weight_composition", "expand_style", "combine_embeds", "start_at", "end_at",
         "embeds_scaling"),
        (("model", "MODEL", False), ("ipadapter", "IPADAPTER", False), ("image_style", "IMAGE", False),
         ("image_composition", "IMAGE", False), ("image_negative", "IMAGE", True), ("attn_mask", "MASK", True),
         ("clip_vision", "CLIP_VISION", True)),
        (("MODEL", "MODEL"),)),
    "IPAdapterEncoder": NodeTable(
        ("weight",),
        (("ipadapter", "IPADAPTER", False), ("image", "IMAGE", False), ("mask", "MASK", True),
         ("clip_vision", "CLIP_VISION", True)),
        (("pos_embed", "EMBEDS"), ("neg_embed", "EMBEDS"))),
    "IPAdapterCombineEmbeds": NodeTable(
        ("method",),
        (("embed1", "EMBEDS", False), *((f"embed{i}", "EMBEDS", True) for i in range(2, 6))),
        (("EMBEDS", "EMBEDS"),)),
    "IPAdapterEmbeds": NodeTable(
        ("weight", "weight_type", "start_at", "end_at", "embeds_scaling"),
        (("model", "MODEL", False), ("ipadapter", "IPADAPTER", False), ("pos_embed", "EMBEDS", False),
         ("neg_embed", "EMBEDS", True), ("attn_mask", "MASK", True), ("clip_vision", "CLIP_VISION", True)),
        (("MODEL", "MODEL"),), later=(("embeds_scaling", "V only"),)),
    "PrepImageForClipVision": NodeTable(
        ("interpolation", "crop_position", "sharpening"), (("image", "IMAGE", False),), (("IMAGE", "IMAGE"),)),
}

#: This pack's nodes (and ComfyUI's) that converted graphs use. Checked against the live
#: registry by tests/integration/test_migrate_in_comfyui.py.
OURS: dict[str, NodeTable] = {
    "LoadIPAdapter": NodeTable(("adapter_name",), (), (("ip_adapter", "IP_ADAPTER_CHECKPOINT"),), (315, 58)),
    "CLIPVisionLoader": NodeTable(("clip_name",), (), (("CLIP_VISION", "CLIP_VISION"),), (315, 58)),
    "EncodeImagePrompt": NodeTable(
        ("fit", "combine_embeds", "image_weights", "crop_position", "encode_chunk"),
        (("ip_adapter", "IP_ADAPTER_CHECKPOINT", False), ("clip_vision", "CLIP_VISION", False),
         ("image", "IMAGE", False), ("negative_image", "IMAGE", True)),
        (("image_prompt", "IP_ADAPTER_IMAGE_PROMPT"),), (300, 180)),
    "ApplyIPAdapter": NodeTable(
        ("weight", "start_percent", "end_percent", "weight_type", "embeds_scaling", "layer_weights",
         "weight_schedule", "end_weight", "step_weights", "latent_weights"),
        (("model", "MODEL", False), ("ip_adapter", "IP_ADAPTER_CHECKPOINT", False),
         ("image_prompt", "IP_ADAPTER_IMAGE_PROMPT", False), ("attn_mask", "MASK", True),
         ("latent_weights_list", "FLOAT", True)),
        (("MODEL", "MODEL"),), (300, 340)),
    "ImageBatch": NodeTable((), (("image1", "IMAGE", False), ("image2", "IMAGE", False)),
                            (("IMAGE", "IMAGE"),), (210, 46)),
}

#: Encode Image Prompt's encode_chunk default (images per CLIP vision call).
ENCODE_CHUNK = 16

#: Our widget defaults, for widget inputs a converted node takes from a link instead.
OUR_DEFAULTS: dict[str, object] = {
    "fit": "center crop", "combine_embeds": "concat", "image_weights": "", "crop_position": "center",
    "encode_chunk": ENCODE_CHUNK, "weight": 1.0, "start_percent": 0.0, "end_percent": 1.0, "weight_type": "linear",
    "embeds_scaling": "V only", "layer_weights": "", "weight_schedule": "constant", "end_weight": 1.0,
    "step_weights": "", "latent_weights": "",
}

WEIGHTS_LEFT = ("Frame weights (animation) are generated by the incumbent's own strategies (timing curves, "
                "frames per image, shift/alternate batches), which no node here reproduces. The node stays: a "
                "converted IPAdapterBatch reads its weights output on Apply IP-Adapter's latent_weights_list; or "
                "type the weights into latent_weights.")

#: The incumbent's node types that are left as they are, and why / what to do.
UNMAPPED: dict[str, str] = {
    "IPAdapterFaceID": "FaceID adapters need InsightFace face embeddings, which this pack does not compute. "
                       "Keep ComfyUI_IPAdapter_plus installed for this node.",
    "IPAdapterFaceIDKolors": "FaceID/Kolors adapters are not supported by this pack. Keep ComfyUI_IPAdapter_plus for it.",
    "IPAAdapterFaceIDBatch": "FaceID adapters need InsightFace; not supported here. Keep ComfyUI_IPAdapter_plus for it.",
    "IPAdapterUnifiedLoaderFaceID": "FaceID presets (InsightFace + LoRA) are not supported by this pack.",
    "IPAdapterInsightFaceLoader": "InsightFace is not used by this pack (no FaceID support).",
    "IPAdapterUnifiedLoaderCommunity": "Composition/Kolors presets: load the file with Load IP-Adapter and the matching "
                                       "CLIP vision by hand (Kolors is not supported).",
    "IPAdapterNoise": "Noise images for the negative are not offered here; connect any image to Encode Image "
                      "Prompt's negative_image instead (keep the node with ComfyUI_IPAdapter_plus to reproduce it).",
    "IPAdapterClipVisionEnhancer": "The CLIP vision enhancer (tiled embeds) has no counterpart here.",
    "IPAdapterClipVisionEnhancerBatch": "The CLIP vision enhancer (tiled embeds) has no counterpart here.",
    "IPAdapterMS": "Mad-scientist layer weights use the incumbent's own block numbering; rebuild with Apply "
                   "IP-Adapter's layer_weights (one multiplier per cross-attention layer, README).",
    "IPAdapterFromParams": "Regional params batches have no counterpart yet: use one Apply IP-Adapter per region "
                           "with attn_mask.",
    "IPAdapterRegionalConditioning": "Regional params have no counterpart yet: use one Apply IP-Adapter per region "
                                     "with attn_mask, and ComfyUI's Conditioning (Set Mask) for the prompts.",
    "IPAdapterCombineParams": "Regional params have no counterpart yet (see IPAdapterRegionalConditioning).",
    "IPAdapterPreciseStyleTransfer": "style_boost has no input here; use Apply IP-Adapter with weight_type "
                                     "'style transfer precise' (style_boost = weight) by hand.",
    "IPAdapterPreciseStyleTransferBatch": "style_boost has no input here; use Encode Image Prompt (combine_embeds 'one "
                                          "per latent') and Apply IP-Adapter ('style transfer precise') by hand.",
    "IPAdapterPreciseComposition": "composition_boost has no input here; use Apply IP-Adapter with weight_type "
                                   "'composition precise' by hand.",
    "IPAdapterPreciseCompositionBatch": "composition_boost has no input here; use Encode Image Prompt (combine_embeds "
                                        "'one per latent') and Apply IP-Adapter ('composition precise') by hand.",
    "IPAdapterWeights": WEIGHTS_LEFT,
    "IPAdapterWeightsFromStrategy": WEIGHTS_LEFT,
    "IPAdapterPromptScheduleFromWeightsStrategy": "Prompt schedules from a weights strategy have no counterpart here "
                                                  "(this pack does not schedule text prompts).",
    "IPAdapterCombineWeights": WEIGHTS_LEFT,
    "IPAdapterEmbedsBatch": "One prompt per latent from encoder embeds: rebuild with Encode Image Prompt "
                            "(combine_embeds 'one per latent') and Apply IP-Adapter by hand.",
    "IPAdapterStyleCompositionBatch": "Style + composition with one reference per latent: rebuild with two Encode "
                                      "Image Prompt (combine_embeds 'one per latent') and two Apply IP-Adapter "
                                      "(weight_type 'style transfer' / 'composition') by hand.",
    "IPAdapterTiledBatch": "Tiled references one per latent: Encode Image Prompt's fit 'tiled' with combine_embeds "
                           "'one per latent' is the closest (tiles act on the whole image, not each on its area); "
                           "rebuild by hand.",
    "IPAdapterSaveEmbeds": "The incumbent saves embeds as a pickle (.ipadpt), which this pack never reads. Re-encode: "
                           "Encode Image Prompt -> Save Image Prompt writes a *.image_prompt.safetensors file.",
    "IPAdapterLoadEmbeds": "A pickled .ipadpt file is never loaded here (it could run code). Re-encode the original "
                           "images with Encode Image Prompt and save them with Save Image Prompt; load them with "
                           "Load Image Prompt.",
}
