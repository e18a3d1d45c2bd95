"""Pure-PyTorch core of the IP-Adapter pack.

Nothing in this package imports ComfyUI: checkpoint formats and variant detection
(`state_dict`, `spec`, `loading`), the projection models (`projection`), the adapter module
(`model`), the decoupled-attention math and embeds scaling (`attention`), the checkpoint-index to
slot tables (`layout`), weight types as per-layer tables (`weighting`), attention masks on
each layer's token grid (`masking`), the shared patch machinery (`patch`: one application of an
adapter, its caches, rows, gate and mask) and the model families (`families`: how an adapter
reaches a UNet's attn2 slots or a DiT's blocks, one module per family behind one interface).
"""

from .errors import AdapterFormatError, ImagePromptError
from .spec import AdapterSpec, BaseModel, EncoderFeature, ModelFamily, ProjectionKind

__all__ = [
    "AdapterFormatError",
    "AdapterSpec",
    "BaseModel",
    "EncoderFeature",
    "ImagePromptError",
    "ModelFamily",
    "ProjectionKind",
]
