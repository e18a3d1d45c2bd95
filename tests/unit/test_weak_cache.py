"""PerObjectCache: one value per live owner, recomputed when the owner's key changes, dropped with the owner."""

from __future__ import annotations

import gc

from ipadapter_pack.utils.weak_cache import PerObjectCache


class _Owner:
    pass


def test_a_value_is_computed_once_per_owner_and_key() -> None:
    cache: PerObjectCache[list] = PerObjectCache()
    first, second = _Owner(), _Owner()
    value = cache.get(first, ("size", 224), lambda: [1])
    assert cache.get(first, ("size", 224), lambda: [2]) is value
    assert cache.get(second, ("size", 224), lambda: [3]) == [3]  # another owner: its own value
    assert cache.computed == 2


def test_a_new_key_replaces_the_stale_value() -> None:
    cache: PerObjectCache[str] = PerObjectCache()
    owner = _Owner()
    assert cache.get(owner, "v1", lambda: "old") == "old"
    assert cache.get(owner, "v2", lambda: "new") == "new"
    assert cache.get(owner, "v2", lambda: "again") == "new"
    assert cache.get(owner, "v1", lambda: "recomputed") == "recomputed"  # only the latest key is kept
    assert len(cache) == 1


def test_the_entry_dies_with_its_owner() -> None:
    cache: PerObjectCache[str] = PerObjectCache()
    owner = _Owner()
    cache.get(owner, 0, lambda: "value")
    assert len(cache) == 1
    del owner
    gc.collect()
    assert len(cache) == 0
    newcomer = _Owner()  # possibly at the freed address: must not see the old value
    assert cache.get(newcomer, 0, lambda: "fresh") == "fresh"
