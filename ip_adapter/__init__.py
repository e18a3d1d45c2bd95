"""Pure-PyTorch core of the IP-Adapter pack.

Nothing in this package imports ComfyUI: checkpoint formats and variant detection
(`state_dict`, `spec`), the projection models (`projection`), the adapter module
(`model`), the decoupled-attention math and embeds scaling (`attention`), the checkpoint-index to
UNet-slot tables (`layout`), weight types as per-layer tables (`weighting`), attention masks on
each layer's token grid (`masking`) and the attn2 patch object (`patch`).
"""

from .errors import AdapterFormatError, ImagePromptError
from .spec import AdapterSpec, BaseModel, EncoderFeature, ProjectionKind

__all__ = [
    "AdapterFormatError",
    "AdapterSpec",
    "BaseModel",
    "EncoderFeature",
    "ImagePromptError",
    "ProjectionKind",
]
