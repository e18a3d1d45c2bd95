"""Test-only nodes that hand in-memory objects (a tiny UNet, a CLIP vision tower, an IMAGE) to the executor.

ComfyUI's own loaders only recognise full-size model files, so prompts that run
through the real executor start from these: each registered class is a V1 node
with no inputs whose single output is one fixed Python object. The executor
caches them like any node without inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self


class _Value:
    RETURN_TYPES: tuple = ()
    FUNCTION = "get"
    CATEGORY = "testing"
    value: Any = None

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def get(self):
        return (type(self).value,)


class ValueNodes:
    """Registers value nodes in ``nodes.NODE_CLASS_MAPPINGS`` and removes them again on ``close``.

    Use as a context manager or call ``close()`` in a fixture's teardown.
    """

    def __init__(self, comfy, values: Mapping[str, tuple[str, Any]] | None = None):
        """``comfy``: the booted ComfyUI namespace; ``values``: ``{class_type: (io_type, value)}`` to add now."""
        self._mappings = comfy.nodes.NODE_CLASS_MAPPINGS
        self._names: list[str] = []
        for class_type, (io_type, value) in (values or {}).items():
            self.add(class_type, io_type, value)

    def add(self, class_type: str, io_type: str, value: Any) -> str:
        """A node ``class_type`` whose one output (of type ``io_type``) is ``value``; returns the name."""
        if class_type in self._mappings and class_type not in self._names:
            raise ValueError(f"{class_type!r} is already a registered node type")
        self._mappings[class_type] = type(class_type, (_Value,), {"RETURN_TYPES": (io_type,), "value": value})
        if class_type not in self._names:
            self._names.append(class_type)
        return class_type

    def close(self) -> None:
        for name in self._names:
            self._mappings.pop(name, None)
        self._names.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
