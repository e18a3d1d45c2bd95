"""A value computed from an object, kept while that object lives and while its key holds.

Why not a dict keyed by `id(obj)`: ids are reused once an object is freed, so a
model loaded later at the same address would get the old model's value. A weak
reference ends with its object, and the entry with it. Instances are owned by a
value that travels through the graph (never module-global), so two graphs or two
ComfyUI instances in one process cannot see each other's values.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerObjectCache(Generic[T]):
    """One value per live owner object, recomputed when the owner's key changes.

    The key carries whatever the value depends on besides the owner's identity
    (sizes, a weights version). Only the latest key per owner is kept: a new key
    means the owner changed, and the old value is stale.
    """

    def __init__(self) -> None:
        self._by_owner: weakref.WeakKeyDictionary[object, tuple[Hashable, T]] = weakref.WeakKeyDictionary()
        self.computed = 0  # how many times `compute` ran (for tests and benchmarks)

    def get(self, owner: object, key: Hashable, compute: Callable[[], T]) -> T:
        """The value for (owner, key), calling `compute` only when there is none yet."""
        entry = self._by_owner.get(owner)
        if entry is not None and entry[0] == key:
            return entry[1]
        value = compute()
        self.computed += 1
        self._by_owner[owner] = (key, value)
        return value

    def __len__(self) -> int:
        return len(self._by_owner)
