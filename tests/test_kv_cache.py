"""KVCache keeps the keys and values of the longest common prefix, and exactly those."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from glm_runtime.kv_cache import KVCache, common_prefix

torch = pytest.importorskip("torch")

LAYERS = 2


def filled(ids: list[int]) -> KVCache:
    """A cache whose position i holds the value ids[i] in every key and value (so cropping is visible)."""
    cache = KVCache()
    if ids:
        t = torch.tensor(ids, dtype=torch.float32).reshape(1, 1, len(ids), 1).expand(1, 2, len(ids), 4)
        for layer in range(LAYERS):
            cache.past.update(t.clone(), t.clone(), layer)
        cache.extend(ids)
    return cache


def held(cache: KVCache) -> list[int]:
    if len(cache) == 0:
        return []
    return [int(v) for v in cache.past.layers[0].keys[0, 0, :, 0]]


@given(st.lists(st.integers(0, 3)), st.lists(st.integers(0, 3)))
def test_common_prefix(a, b):
    n = common_prefix(a, b)
    assert a[:n] == b[:n]
    assert n == min(len(a), len(b)) or a[n] != b[n]


def test_reuse_keeps_the_common_prefix_when_the_new_prompt_diverges_midway():
    cache = filled([1, 2, 3, 4, 5])
    assert cache.reuse([1, 2, 3, 9, 9, 9]) == 3
    assert cache.ids == [1, 2, 3] and held(cache) == [1, 2, 3]
    assert all(layer.keys.shape[-2] == 3 for layer in cache.past.layers)


def test_reuse_of_an_extension_keeps_everything():
    cache = filled([1, 2, 3])
    assert cache.reuse([1, 2, 3, 4, 5]) == 3 and held(cache) == [1, 2, 3]


def test_reuse_always_leaves_the_last_prompt_token_to_run():
    # The next token's logits come from the last prompt token's forward pass, which is not cached.
    cache = filled([1, 2, 3, 4])
    assert cache.reuse([1, 2, 3, 4]) == 3 and held(cache) == [1, 2, 3]
    cache = filled([1, 2, 3, 4])
    assert cache.reuse([1, 2]) == 1 and held(cache) == [1]


def test_nothing_in_common_clears_the_cache():
    cache = filled([1, 2, 3])
    assert cache.reuse([7, 8]) == 0
    assert len(cache) == 0 and cache.past.get_seq_length() == 0 and cache.nbytes() == 0


def test_extend_refuses_ids_that_do_not_match_the_cached_positions():
    cache = filled([1, 2])
    with pytest.raises(RuntimeError, match="holds 2 positions but 3 ids"):
        cache.extend([3])
    assert len(cache) == 0  # dropped rather than trusted


def test_nbytes_and_room():
    cache = filled([1, 2, 3])
    assert cache.nbytes() == LAYERS * 2 * (1 * 2 * 3 * 4) * 4
    assert cache.room() is None
    assert KVCache(max_tokens=10).room() == 10


# ---- the layers' preallocated buffers (glm_runtime.kv_layer) ----

def _positions(start: int, n: int) -> torch.Tensor:
    return torch.arange(start, start + n, dtype=torch.float32).reshape(1, 1, n, 1).expand(1, 2, n, 4)


def test_layers_grow_in_place_keeping_what_they_hold():
    from glm_runtime.kv_layer import ROUND, KVLayer

    layer = KVLayer()
    layer.update(_positions(0, 3), _positions(0, 3))
    assert layer.capacity == ROUND and layer.get_seq_length() == 3
    storage = layer.keys.untyped_storage().data_ptr()
    for i in range(3, ROUND):  # one position at a time, as decoding writes them: no copy
        k, v = layer.update(_positions(i, 1), _positions(i, 1))
    assert layer.keys.untyped_storage().data_ptr() == storage
    layer.update(_positions(ROUND, 5), _positions(ROUND, 5))  # past the end: one copy into twice the room
    assert layer.capacity == 2 * ROUND
    assert layer.keys[0, 1, :, 0].tolist() == list(range(ROUND + 5)) == layer.values[0, 0, :, 3].tolist()


def test_layers_respect_the_cache_limit_and_keep_their_buffers_when_cleared():
    cache = KVCache(max_tokens=300)
    for layer in range(LAYERS):
        cache.past.update(_positions(0, 200), _positions(0, 200), layer)
    assert [layer.capacity for layer in cache.past.layers] == [256] * LAYERS
    for layer in range(LAYERS):  # doubling would give 512: the limit says 300
        cache.past.update(_positions(200, 100), _positions(200, 100), layer)
    cache.extend(list(range(300)))
    assert [layer.capacity for layer in cache.past.layers] == [300] * LAYERS
    cache.clear()
    assert cache.past.get_seq_length() == 0 and cache.nbytes() == 0
    assert [layer.capacity for layer in cache.past.layers] == [300] * LAYERS


def test_crop_then_extend_overwrites_the_dropped_positions():
    cache = filled([1, 2, 3, 4, 5])
    assert cache.reuse([1, 2, 7, 8]) == 2
    for layer in range(LAYERS):
        cache.past.update(_positions(7, 2), _positions(7, 2), layer)
    cache.extend([7, 8])
    assert held(cache) == [1, 2, 7, 8]
