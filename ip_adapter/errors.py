"""Exceptions with messages written for the person wiring the graph.

Every message says what was found, what was expected and what to do about it,
so ComfyUI shows something actionable instead of a torch shape error.
"""


class AdapterFormatError(ValueError):
    """An IP-Adapter checkpoint could not be read or is not a known variant."""


class ImagePromptError(ValueError):
    """An image prompt does not fit the adapter, the encoder or the model."""
