"""Weight-only INT8 and INT4 linear layers (W8A16 / W4A16), as GLM-130B showed works for GLM.

Weights are stored as integers with float scales; activations stay in the model's float dtype.

- INT8: symmetric, one scale per output row. CPU runs torch's packed `_weight_int8pack_mm`.
- INT4: asymmetric, one float16 (scale, min) pair per `group_size` inputs of each row, in the
  layout of `glm_runtime.kernels` (rows in tiles of 4). One `Int4Linear` picks its path by the
  number of activation rows: the compiled kernel for decode, dequantize + bf16 matmul for prefill
  (torch's own int4 kernel when no compiler is available).

A quantized checkpoint holds, per quantized linear `name`: `name.qweight` and `name.scales`, plus
the float bias. Which scheme and INT4 packing were used lives in the checkpoint's metadata (see
`QuantConfig.to_dict`: `packing`), never in its names. Checkpoints of the first INT4 layout
(`name.scales_and_zeros`, no `packing` recorded) are repacked on load (`int4_from_legacy`).

    >>> lin = torch.nn.Linear(256, 64)                           # doctest: +SKIP
    >>> q = Int4Linear.from_linear(lin, group_size=64)            # doctest: +SKIP
    >>> (q(x) - lin(x)).abs().max()   # small                     # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from glm_runtime.kernels.int4 import Int4Linear, Int4Packed, dequantize_int4, int4_packed_shapes, quantize_int4

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "INT4_PACKING", "Int4Linear", "Int4Packed", "Int8Linear", "QuantConfig", "dequantize_int4", "int4_from_legacy",
    "int4_packed_shapes", "int4_supported", "quantize_int4", "quantize_int8", "quantized_linear_names", "replace_linear",
]

# Linear layers of GlmForCausalLM / Glm4ForCausalLM that carry almost all the weights.
_LINEAR_SUFFIXES = (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_up_proj", "mlp.down_proj",
)


@dataclass(frozen=True)
class QuantConfig:
    """How a checkpoint's linear weights are quantized; stored in `config.json` as `quantization_config`.

        >>> QuantConfig(bits=4, group_size=32).scheme
        'w4a16-asym-groupwise'
    """

    bits: int
    group_size: int = 128          # INT4 only; INT8 uses one scale per output row
    lm_head: bool = True           # quantize the output projection too (GLM-4's is ~7% of the weights)
    source: str = ""               # where the float weights came from
    quant_method: str = "glm-agent"
    packing: str = ""              # INT4: the stored layout (INT4_PACKING unless an old checkpoint)

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {self.bits}")
        if self.bits == 4 and (self.group_size < 32 or self.group_size & (self.group_size - 1)):
            raise ValueError(f"group_size must be a power of two >= 32, got {self.group_size}")
        if self.bits == 4 and not self.packing:
            object.__setattr__(self, "packing", INT4_PACKING)
        if self.bits == 4 and self.packing not in (INT4_PACKING, LEGACY_INT4_PACKING):
            raise ValueError(f"unknown INT4 packing {self.packing!r} (this version reads {INT4_PACKING!r} "
                             f"and {LEGACY_INT4_PACKING!r}); re-quantize from the float checkpoint")

    @property
    def scheme(self) -> str:
        return "w8a16-sym-per-channel" if self.bits == 8 else "w4a16-asym-groupwise"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "scheme": self.scheme}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantConfig:
        if d.get("quant_method") != "glm-agent":
            raise ValueError(f"unsupported quantization_config (quant_method={d.get('quant_method')!r})")
        bits = int(d["bits"])
        # No `packing` recorded: written before the kernel layout existed.
        packing = str(d.get("packing") or (LEGACY_INT4_PACKING if bits == 4 else ""))
        return cls(bits=bits, group_size=int(d.get("group_size", 128)), lm_head=bool(d.get("lm_head", True)),
                   source=str(d.get("source", "")), packing=packing)


def quantized_linear_names(num_layers: int, *, lm_head: bool = True) -> Iterator[str]:
    """Module names a `QuantConfig` quantizes, in the transformers GLM layout."""
    for i in range(num_layers):
        for suffix in _LINEAR_SUFFIXES:
            yield f"model.layers.{i}.{suffix}"
    if lm_head:
        yield "lm_head"


# ---- INT8: symmetric, per output row ----

_ROW_CHUNK = 8192  # rows quantized at a time: float32 temporaries stay small even for the 151552-row lm_head


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`w` [N, K] float -> (int8 [N, K], float32 scales [N]) with w ~= q * scale[:, None]."""
    qs, ss = [], []
    for rows in w.split(_ROW_CHUNK):
        rows = rows.float()
        scales = (rows.abs().amax(dim=1) / 127.0).clamp(min=1e-8)
        qs.append(torch.round(rows / scales[:, None]).clamp(-128, 127).to(torch.int8))
        ss.append(scales)
    return torch.cat(qs), torch.cat(ss)


class Int8Linear(nn.Module):
    """y = x @ (qweight * scales).T + bias, without materializing the float weight on CPU."""

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        qweight = qweight.to(torch.int8).contiguous()
        if qweight.data_ptr() % 64:
            # torch's int8 kernel crashes (SIGSEGV) on multi-row inputs when the weight is not 16-byte
            # aligned, as a tensor memory-mapped from a safetensors file may be (8-byte alignment).
            qweight = qweight.clone()  # torch's allocator aligns to 64 bytes
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales.to(dtype).contiguous())
        self.bias = None if bias is None else nn.Parameter(bias.to(dtype), requires_grad=False)

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, *, dtype=None) -> Int8Linear:
        q, s = quantize_int8(weight)
        return cls(q, s, bias, dtype or weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if x2.device.type == "cpu":
            y = torch.ops.aten._weight_int8pack_mm(x2, self.qweight, self.scales.to(x.dtype))
        else:
            # No int8-weight kernel on this device: dequantize into the matmul (one layer at a time).
            y = torch.nn.functional.linear(x2, self.qweight.to(x.dtype)) * self.scales.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits=8"


# ---- INT4: asymmetric, group-wise (one implementation: glm_runtime.kernels) ----
#
# `Int4Linear`, `Int4Packed`, `quantize_int4` and `dequantize_int4` are the kernel package's: the
# compiled kernel for decode-sized inputs, dequantize + bf16 matmul from DENSE_MIN_ROWS rows on.

INT4_PACKING = "tile4-f16minscale-v1"   # kernels/int4.py's layout: what a checkpoint's metadata records
LEGACY_INT4_PACKING = "nibble-bf16-v0"  # the first layout (qweight [N, K/2] + scales_and_zeros)


def int4_from_legacy(qweight: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int) -> Int4Packed:
    """Repack a weight saved in the first INT4 layout (before the kernel) into `Int4Packed`.

    That layout stored nibbles (even column high) and bf16 (scale, zero) with
    w = (q - 8) * scale + zero. Its weights sit on a 16-level grid per group whose ends are used, so
    quantizing them again recovers the same grid up to float16 rounding of scale and min.

        >>> p = int4_from_legacy(torch.zeros(4, 64, dtype=torch.uint8), torch.zeros(4, 4, 2), 32)  # doctest: +SKIP
    """
    n, half = qweight.shape
    k = 2 * half
    if scales_and_zeros.shape != (k // group_size, n, 2):
        raise ValueError(f"scales_and_zeros shape {tuple(scales_and_zeros.shape)}, expected {(k // group_size, n, 2)}")
    hi, lo = (qweight >> 4).float(), (qweight & 0xF).float()
    q = torch.stack([hi, lo], dim=-1).reshape(n, k // group_size, group_size)
    sz = scales_and_zeros.float().transpose(0, 1)  # [N, K/g, 2]
    w = ((q - 8.0) * sz[..., 0:1] + sz[..., 1:2]).reshape(n, k)
    return quantize_int4(w, group_size)


def int4_supported(in_features: int, group_size: int) -> bool:
    """Whether `Int4Linear` takes this shape: any width (padded to whole 128-wide blocks), with a
    group size the kernel has (32, 64, 128, 256 or a multiple of 128).

        >>> int4_supported(4096, 128), int4_supported(4096, 48)
        (True, False)
    """
    return in_features > 0 and (group_size in (32, 64, 128, 256) or (group_size > 0 and group_size % 128 == 0))


def replace_linear(model: nn.Module, name: str, module: nn.Module) -> None:
    """Swap the submodule at dotted `name` (e.g. `model.layers.0.mlp.down_proj`) for `module`."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
