"""The KV cache of the engine's last sequence, and the token ids it holds.

An agent calls the model again and again over a conversation that only grows, so the prompt of
each call starts with the tokens of the previous one. `KVCache.reuse(ids)` keeps the keys and
values of the longest common prefix and drops the rest (the new prompt may diverge midway, e.g.
when a turn is re-rendered), so the engine prefills only what is new.

It holds one sequence (batch 1) and at most `max_tokens` tokens; it knows nothing of sampling.
Each layer's keys and values live in a preallocated buffer (`glm_runtime.kv_layer.KVLayer`) that the
model's forward and the engine's decode step (`glm_runtime.decoder`) write in place, token by token.

    >>> cache = KVCache(config, max_tokens=4096)        # doctest: +SKIP
    >>> cache.reuse([1, 2, 3, 4])                        # empty: nothing to reuse
    0
    >>> # ... the engine runs the model on ids[0:], then cache.extend([1, 2, 3, 4]) ...
    >>> cache.reuse([1, 2, 3, 9, 9])                     # keeps 3 tokens, drops the 4th
    3
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["KVCache", "common_prefix"]


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class KVCache:
    """A transformers `DynamicCache` of `KVLayer`s plus the ids whose keys and values it holds."""

    def __init__(self, config: Any = None, *, max_tokens: int | None = None) -> None:
        self.config = config
        self.max_tokens = max_tokens
        self.ids: list[int] = []
        self.past = self._new_past()

    def _new_past(self):
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        from glm_runtime.kv_layer import KVLayer

        past = DynamicCache(config=self.config) if self.config is not None else DynamicCache()
        # Plain full-attention layers get preallocated buffers; any other kind (sliding) stays as built.
        past.layers = [KVLayer(limit=self.max_tokens) if type(layer) is DynamicLayer else layer
                       for layer in past.layers]
        if past.layer_class_to_replicate is DynamicLayer:  # no config: layers appear on first use
            past.layer_class_to_replicate = lambda: KVLayer(limit=self.max_tokens)
        return past

    def __len__(self) -> int:
        return len(self.ids)

    def reuse(self, ids: Sequence[int]) -> int:
        """Crop to the longest common prefix with `ids`, leaving at least one token to run; return its length.

        The last prompt token is always run again, even when the whole prompt is cached, because the
        next token's logits come from its forward pass (they are not kept).
        """
        keep = min(common_prefix(self.ids, ids), len(ids) - 1)
        keep = max(keep, 0)
        if keep == 0:
            self.clear()
        elif keep < len(self.ids):
            self.past.crop(keep - len(self.ids))  # transformers 5: a negative count drops from the end
            del self.ids[keep:]
        return keep

    def extend(self, ids: Sequence[int]) -> None:
        """Record that the model has just written the keys and values of `ids` into `past`."""
        self.ids.extend(int(i) for i in ids)
        held, recorded = self.past.get_seq_length(), len(self.ids)
        if held != recorded:
            # The cache and its ids disagree: start over rather than ever attend to the wrong tokens.
            self.clear()
            raise RuntimeError(f"KV cache holds {held} positions but {recorded} ids were recorded")

    def room(self) -> int | None:
        """How many more tokens fit, or None when unbounded."""
        return None if self.max_tokens is None else self.max_tokens - len(self.ids)

    def clear(self) -> None:
        """Forget every position; the layers keep their buffers for the next sequence."""
        self.ids = []
        for layer in self.past.layers:
            layer.reset()

    def nbytes(self) -> int:
        """Bytes held by the cached keys and values."""
        total = 0
        for layer in getattr(self.past, "layers", []):
            for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if t is not None and hasattr(t, "numel"):
                    total += t.numel() * t.element_size()
        return total
