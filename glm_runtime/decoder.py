"""GLM-4's one-token decode step written out by hand, over the KV cache's preallocated buffers.

Why: per INT4 decode token at the 0.93B shape (one thread, best of 80), the weight matmuls took
10.8 ms and the model's forward around them 15.8 ms: transformers' module calls and output
dataclasses, causal-mask and RoPE set-up per call, `torch.cat` of every layer's cache, and SDPA with
one query row per head (the CPU flash kernel costs ~10x more that way than with the 8 query heads
of a key/value head as 8 rows of one problem). This step, the same math without that, took 12.3 ms:
weights are read from the model once, q/k/v are one matmul, RoPE is computed once per token.

The math is transformers' `GlmForCausalLM` / `Glm4ForCausalLM` (models/glm/modeling_glm.py,
models/glm4/modeling_glm4.py) op for op, in the model's dtype, so the logits match the model's own
forward to rounding: RMSNorm in float32; q/k/v projection; interleaved rotary embedding on the
first `partial_rotary_factor` of each head (the cos/sin pair i turns dims 2i, 2i+1); grouped-query
attention; SwiGLU on the fused gate_up projection; and Glm4's two extra post-norms.

What it does not own: prefill (the model's own forward writes the same `KVLayer`s), sampling, and
the cache's token ids (`glm_runtime.kv_cache.KVCache`).

    >>> decoder = Decoder.from_model(model)              # None: not a model this step knows  # doctest: +SKIP
    >>> logits = decoder.step(token_id, kv_cache.past)    # (vocab,); the cache holds one more position  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from glm_runtime.checkpoint import page_out
from glm_runtime.kernels import extension
from glm_runtime.kernels.int4 import Int4Linear, Int4Packed

__all__ = ["Decoder"]

Linear = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class _Layer:
    norm_in: nn.Module             # input_layernorm
    qkv: Linear                    # (1, hidden) -> (1, (heads + 2 kv_heads) * head_dim)
    o: Linear
    norm_post_attn: nn.Module | None  # Glm4 only: post_self_attn_layernorm
    norm_mlp: nn.Module            # post_attention_layernorm (before the MLP)
    gate_up: Linear
    act: Callable[[torch.Tensor], torch.Tensor]
    down: Linear
    norm_post_mlp: nn.Module | None   # Glm4 only: post_mlp_layernorm


class Decoder:
    """One token through a GLM-4 model: `step(token, past) -> logits`, writing the token's keys and values."""

    def __init__(self, model: nn.Module) -> None:
        cfg = model.config
        inner = model.model
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.embed = inner.embed_tokens.weight
        rope = inner.rotary_emb
        self.inv_freq, self.rope_scaling = rope.inv_freq.float(), float(rope.attention_scaling)
        self.rotary_dim = 2 * self.inv_freq.numel()
        self.norm = inner.norm
        self.lm_head = _linear(model.lm_head)
        self.layers = [self._layer(block) for block in inner.layers[: cfg.num_hidden_layers]]

    @classmethod
    def from_model(cls, model: nn.Module) -> Decoder | None:
        """A decoder for a transformers GLM-4 model (`glm` or `glm4`), or None for anything else.

        None also when the model is of a kind this step does not reproduce exactly: a RoPE variant
        other than the default (scaled, dynamic), or a layer of an unexpected shape.
        """
        cfg = getattr(model, "config", None)
        if getattr(cfg, "model_type", None) not in ("glm", "glm4"):
            return None
        rope = getattr(cfg, "rope_parameters", None) or {}
        if rope.get("rope_type", "default") != "default":
            return None
        inner = getattr(model, "model", None)
        blocks = getattr(inner, "layers", None)
        if blocks is None or len(blocks) < cfg.num_hidden_layers or not hasattr(inner, "rotary_emb"):
            return None
        attn = blocks[0].self_attn
        if not all(hasattr(attn, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")):
            return None
        return cls(model)

    def _layer(self, block: nn.Module) -> _Layer:
        attn, mlp = block.self_attn, block.mlp
        return _Layer(
            norm_in=block.input_layernorm, qkv=_fused_linear([attn.q_proj, attn.k_proj, attn.v_proj]),
            o=_linear(attn.o_proj), norm_post_attn=getattr(block, "post_self_attn_layernorm", None),
            norm_mlp=block.post_attention_layernorm, gate_up=_linear(mlp.gate_up_proj), act=mlp.activation_fn,
            down=_linear(mlp.down_proj), norm_post_mlp=getattr(block, "post_mlp_layernorm", None))

    def step(self, token: int, past) -> torch.Tensor:
        """Run `token` at the next position of `past` (a transformers Cache); return its (vocab,) logits.

        The logits are in the model's dtype, as the model's forward returns them.
        """
        pos = past.get_seq_length()
        x = self.embed[token].unsqueeze(0).to(self.norm.weight.dtype)  # (1, hidden); the table may be stored 16-bit
        cos, sin = self._rope(pos, x.dtype)
        for layer, kv in zip(self.layers, past.layers):
            x = self._block(layer, kv, x, cos, sin)
        return self.lm_head(_rms_norm(x, self.norm))[0]

    def _rope(self, pos: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # As GlmRotaryEmbedding: float32 angles, cos/sin scaled, then cast to the model's dtype.
        freqs = self.inv_freq * float(pos)
        return (freqs.cos() * self.rope_scaling).to(dtype), (freqs.sin() * self.rope_scaling).to(dtype)

    def _block(self, layer: _Layer, kv, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h, kvh, hd = self.heads, self.kv_heads, self.head_dim
        qkv = layer.qkv(_rms_norm(x, layer.norm_in)).view(h + 2 * kvh, hd)
        # Rotate q and k together, in place: pairs (2i, 2i+1) of the first rotary_dim dims turn by angle i.
        pairs = qkv[: h + kvh, : self.rotary_dim].unflatten(-1, (-1, 2))
        x0, x1 = pairs[..., 0], pairs[..., 1]
        pairs.copy_(torch.stack((x0 * cos - x1 * sin, x1 * cos + x0 * sin), dim=-1))
        q, k, v = qkv.split([h, kvh, kvh])
        keys, values = kv.update(k.view(1, kvh, 1, hd), v.view(1, kvh, 1, hd))
        # The h // kvh query heads that share a key/value head are the rows of one attention problem.
        out = F.scaled_dot_product_attention(q.view(1, kvh, h // kvh, hd), keys, values, scale=self.scaling)
        a = layer.o(out.reshape(1, h * hd))
        if layer.norm_post_attn is not None:
            a = _rms_norm(a, layer.norm_post_attn)
        x = x + a
        gate, up = layer.gate_up(_rms_norm(x, layer.norm_mlp)).chunk(2, dim=-1)
        m = layer.down(up * layer.act(gate))
        if layer.norm_post_mlp is not None:
            m = _rms_norm(m, layer.norm_post_mlp)
        return x + m


def _rms_norm(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    # GlmRMSNorm.forward, op for op (float32 statistics, weight applied in the input's dtype).
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * h.to(x.dtype)


def _linear(module: nn.Module) -> Linear:
    """The cheapest call that computes `module(x)` for a (1, in_features) x."""
    if isinstance(module, Int4Linear) and module.qweight.device.type == "cpu":
        ops = extension.load()
        if ops is not None:  # the kernel op itself, without the module's shape checks and dispatch
            qweight, scales, group, n, bias = (module.qweight, module.scales, module.group_size,
                                               module.out_features, module.bias)
            return lambda x: ops.int4_mm(x, qweight, scales, group, n, bias)
    if type(module) is nn.Linear:
        weight, bias = module.weight, module.bias
        return lambda x: F.linear(x, weight, bias)
    return module


def _fused_linear(modules: list[nn.Module]) -> Linear:
    """One call for several projections of the same input, concatenated along the output.

    INT4 layers are fused into one packed weight (their rows are whole 4-row tiles, so the kernel
    computes each output exactly as the separate layers would); the modules are re-pointed to
    views of the fused tensors, so the weights are held once. Other kinds are called one by one.
    """
    if all(isinstance(m, Int4Linear) for m in modules) and _int4_fusable(modules):
        return _linear(_fuse_int4(modules))
    calls = [_linear(m) for m in modules]
    return lambda x: torch.cat([f(x) for f in calls], dim=-1)


def _int4_fusable(modules: list[Int4Linear]) -> bool:
    first = modules[0]
    return (all(m.in_features == first.in_features and m.group_size == first.group_size for m in modules)
            and all(m.out_features % 4 == 0 for m in modules[:-1])
            and len({m.qweight.device for m in modules}) == 1)


def _fuse_int4(modules: list[Int4Linear]) -> Int4Linear:
    first = modules[0]
    bias = None
    if any(m.bias is not None for m in modules):  # a missing bias adds exact zeros
        bias = torch.cat([m.bias if m.bias is not None else m.qweight.new_zeros(m.out_features, dtype=torch.float32)
                          for m in modules])
    packed = Int4Packed(torch.cat([m.qweight for m in modules]), torch.cat([m.scales for m in modules]),
                        first.group_size, first.in_features, sum(m.out_features for m in modules))
    start, replaced = 0, []
    for m in modules:
        tiles = m.qweight.shape[0]
        replaced += [m.qweight, m.scales]
        m.qweight, m.scales = packed.qweight[start : start + tiles], packed.scales[start : start + tiles]
        start += tiles
    page_out(replaced)  # the mapped originals read above would stay resident beside the copy
    return Int4Linear.from_packed(packed, bias)
