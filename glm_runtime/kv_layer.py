"""One attention layer's cached keys and values in a preallocated buffer: no copy of the cache per token.

transformers' `DynamicLayer` grows its keys and values with `torch.cat` on every call, so each decode
step copies the whole cache of every layer. `KVLayer` is a drop-in `DynamicLayer` (what
`DynamicCache`, the models' forward and `glm_runtime.prompt_cache` see: `update`, `crop`,
`get_seq_length`, and `keys`/`values` holding exactly the cached positions) whose keys and values
are views into buffers with spare room. A call writes its new positions in place; the buffers grow
by doubling (amortized: a long conversation copies its cache a logarithmic number of times), up to
`limit` positions when one is given.

The buffers survive `crop` and `reset`, so a conversation that is cropped and extended, or a cache
cleared for the next one, reuses their memory.

    >>> layer = KVLayer(limit=4096)                                       # doctest: +SKIP
    >>> k, v = layer.update(torch.zeros(1, 2, 5, 64), torch.zeros(1, 2, 5, 64))  # doctest: +SKIP
    >>> layer.get_seq_length(), layer.capacity                           # doctest: +SKIP
    (5, 256)
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

__all__ = ["KVLayer"]

ROUND = 256  # capacity grows in whole multiples of this many positions


class KVLayer(DynamicLayer):
    """A `DynamicLayer` backed by growable (batch, heads, capacity, head_dim) buffers."""

    def __init__(self, limit: int | None = None) -> None:
        super().__init__()
        self.limit = limit
        self.length = 0
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None

    @property
    def capacity(self) -> int:
        return 0 if self._k is None else self._k.shape[-2]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        b, h, _, d = key_states.shape
        self._k = key_states.new_empty(b, h, 0, d)
        self._v = value_states.new_empty(b, h, 0, value_states.shape[-1])
        self.is_initialized = True
        self._views()

    def reserve(self, n: int) -> None:
        """Make room for `n` positions in all (copying what is held once, into a buffer at least twice the size)."""
        if n <= self.capacity:
            return
        cap = max(n, 2 * self.capacity)
        cap = -(-cap // ROUND) * ROUND
        if self.limit is not None:
            cap = max(n, min(cap, self.limit))
        k = self._k.new_empty(*self._k.shape[:2], cap, self._k.shape[-1])
        v = self._v.new_empty(*self._v.shape[:2], cap, self._v.shape[-1])
        k[:, :, : self.length] = self._k[:, :, : self.length]
        v[:, :, : self.length] = self._v[:, :, : self.length]
        self._k, self._v = k, v
        self._views()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append (batch, heads, n, head_dim) keys and values; return all cached keys and values (views)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        self.reserve(end)
        self._k[:, :, self.length : end] = key_states
        self._v[:, :, self.length : end] = value_states
        self.length = end
        self._views()
        return self.keys, self.values

    def append(self, key: torch.Tensor, value: torch.Tensor) -> None:
        """Write one position's (heads, head_dim) key and value: the decode step's path, without checks."""
        if not self.is_initialized:
            self.lazy_initialization(key[None, :, None], value[None, :, None])
        self.reserve(self.length + 1)
        self._k[0, :, self.length] = key
        self._v[0, :, self.length] = value
        self.length += 1
        self._views()

    def _views(self) -> None:
        self.keys = self._k[:, :, : self.length]
        self.values = self._v[:, :, : self.length]

    def get_seq_length(self) -> int:
        return self.length

    def crop(self, tokens_to_remove: int) -> None:
        """Drop positions from the end: a negative count removes that many (transformers 5's convention)."""
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative count of tokens to remove, got {tokens_to_remove}")
        if self.is_initialized:
            self.length = max(0, self.length + tokens_to_remove)
            self._views()

    def reset(self) -> None:
        """Forget every position; the buffers stay for the next sequence."""
        if self.is_initialized:
            self.length = 0
            self._views()

    def _batch_op(self, *args, **kwargs):  # the engine holds one sequence; beams would break the views
        raise NotImplementedError("KVLayer holds a single sequence (no beam search or batch reshuffles)")

    reorder_cache = batch_repeat_interleave = batch_select_indices = _batch_op
