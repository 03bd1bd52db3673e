"""INT4 weight-only linear layers for CPU: pack once, then `y = x @ dequant(W).T` at memory speed.

Scheme: asymmetric, group-wise along the input dimension. Each group of `group_size` weights of a
row keeps a float16 `scale` and `min`, and each weight a 4-bit `q` in 0..15, so
`w = scale * q + min`. Bits per weight: 4 + 32 / group_size (4.5 at 64, 4.25 at 128).

Two paths, picked by the number of activation rows `n`:

- small n (decode): the C++ kernel (`int4_cpu.cpp`) streams the packed weights once and multiplies
  them with bf16 activations (AVX-512 BF16 dot products, OpenMP over output rows);
- large n (prefill): each call dequantizes the layer into a bf16 matrix and runs torch's dense
  bf16 matmul (oneDNN), which beats any weight-streaming kernel once the weights are reused.

Without the compiled kernel (no compiler, not x86-64) the same API runs on torch alone: the layer
converts its weights once to torch's packed `_weight_int4pack_mm_for_cpu` format, and prefill
dequantizes in torch. Results agree with the compiled path to bf16 rounding.

For the engine (`glm_runtime/quant.py`): replace an `nn.Linear` with `Int4Linear.from_linear(lin)`;
save `qweight`, `scales` (and `bias`) from its state dict, with `group_size` and `in_features` in
the checkpoint's metadata; rebuild with `Int4Linear(in_features, out_features, group_size, bias=...)`
and `load_state_dict`.

    >>> import torch
    >>> w = torch.randn(256, 512)
    >>> packed = quantize_int4(w, group_size=64)
    >>> y = int4_linear(torch.randn(1, 512), packed)
    >>> tuple(y.shape)
    (1, 256)
"""

from __future__ import annotations

import logging
import threading
from typing import NamedTuple

import torch
from torch import nn

from glm_runtime.kernels import extension

__all__ = [
    "DENSE_MIN_ROWS",
    "Int4Linear",
    "Int4Packed",
    "dequantize_int4",
    "int4_linear",
    "int4_packed_shapes",
    "quantize_int4",
]

logger = logging.getLogger(__name__)

BLOCK = 128  # k-values per 64-byte block of the packed layout
GROUP_SIZES = (32, 64, 128, 256)
# From n activation rows on, dequantize + dense bf16 matmul beats streaming the packed weights
# (bench/kernels.py measures the crossover: at 16 rows the kernel still won on 3 of 4 GLM-4 1B
# layers, at 128 the dense path was 2.6-3.7x faster; one thread, AVX-512 BF16 Zen 4).
DENSE_MIN_ROWS = 24


class Int4Packed(NamedTuple):
    """A packed INT4 weight of shape (out_features, in_features); layout in `int4_cpu.cpp`.

    `qweight` uint8 (Np/4, 2*Kp), rows in tiles of 4; `scales` float16 (Np/4, Kp/G, 4, 2) holding
    [scale, min] per tile, group and row (Np, Kp: the shape padded to whole tiles and blocks).
    """

    qweight: torch.Tensor
    scales: torch.Tensor
    group_size: int
    in_features: int
    out_features: int


TILE = 4  # weight rows stored together so that the kernel reads one sequential stream


def _padded_width(k: int, group_size: int) -> int:
    unit = max(BLOCK, group_size)  # group sizes divide 128 or are multiples of it
    return -(-k // unit) * unit


def int4_packed_shapes(out_features: int, in_features: int, group_size: int) -> dict[str, tuple]:
    """{"qweight": (dtype, shape), "scales": (dtype, shape)} of the packed layout (checks saved tensors).

    >>> int4_packed_shapes(8, 100, 32)["qweight"]
    (torch.uint8, (2, 256))
    """
    _check_group_size(group_size)
    kp, tiles = _padded_width(in_features, group_size), -(-out_features // TILE)
    return {"qweight": (torch.uint8, (tiles, 2 * kp)),
            "scales": (torch.float16, (tiles, kp // group_size, TILE, 2))}


def _check_group_size(group_size: int) -> None:
    if group_size not in GROUP_SIZES and not (group_size > 0 and group_size % BLOCK == 0):
        raise ValueError(f"group_size must be one of {GROUP_SIZES} or a multiple of {BLOCK}, got {group_size}")


def quantize_int4(weight: torch.Tensor, group_size: int = 64) -> Int4Packed:
    """Quantize a (out_features, in_features) weight to the packed INT4 layout.

    Works through the rows in chunks, so peak memory stays near the weight itself plus its packed
    copy (GLM-4-9B's output projection is 151552 x 4096).

    >>> p = quantize_int4(torch.randn(8, 100), group_size=32)
    >>> p.qweight.shape, p.scales.shape, p.in_features, p.out_features
    (torch.Size([2, 256]), torch.Size([2, 4, 4, 2]), 100, 8)
    """
    _check_group_size(group_size)
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    n, k = weight.shape
    kp, np_ = _padded_width(k, group_size), -(-n // TILE) * TILE
    qweight = torch.empty(np_ // TILE, 2 * kp, dtype=torch.uint8)
    scales = torch.empty(np_ // TILE, kp // group_size, TILE, 2, dtype=torch.float16)
    chunk = max(TILE, (2**24 // kp) // TILE * TILE)  # ~64 MiB of float32 per chunk
    for r in range(0, np_, chunk):
        q, sm = _quantize_rows(weight[r : r + chunk], group_size, kp, min(chunk, np_ - r))
        qweight[r // TILE : (r + chunk) // TILE] = q
        scales[r // TILE : (r + chunk) // TILE] = sm
    return Int4Packed(qweight, scales, group_size, k, n)


def _quantize_rows(weight: torch.Tensor, group_size: int, kp: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack `rows` rows (a multiple of TILE; missing ones are zero padding) into tile order."""
    w = weight.detach().to(torch.float32)
    if not torch.isfinite(w).all():
        raise ValueError("weight holds inf or nan")
    n, k = w.shape
    # Padding repeats the last column so it cannot widen a group's range; the kernel pads x with zeros.
    if kp > k:
        w = torch.cat([w, w[:, -1:].expand(n, kp - k)], dim=1)
    if rows > n:
        w = torch.cat([w, w.new_zeros(rows - n, kp)], dim=0)
    g = w.reshape(rows, kp // group_size, group_size)
    lo, hi = g.amin(dim=2), g.amax(dim=2)
    scale = ((hi - lo) / 15).to(torch.float16)
    low = lo.to(torch.float16)
    if not (torch.isfinite(scale).all() and torch.isfinite(low).all()):
        raise ValueError("weight values exceed float16's range; INT4 scales are stored in float16")
    # Round with the stored (float16) scale and min so the codes match what the kernel will decode.
    s32 = scale.to(torch.float32).unsqueeze(2)
    q = torch.where(s32 > 0, (g - low.to(torch.float32).unsqueeze(2)) / s32.clamp_min(1e-30), 0.0)
    q = q.round_().clamp_(0, 15).to(torch.int32).reshape(rows, kp // BLOCK, 4, 32)
    words = q[:, :, 0] | q[:, :, 1] << 4 | q[:, :, 2] << 8 | q[:, :, 3] << 12  # (rows, blocks, 32)
    packed = torch.stack([words & 0xFF, words >> 8], dim=-1).to(torch.uint8)  # (rows, blocks, 32, 2)
    qweight = packed.reshape(rows // TILE, TILE, kp // BLOCK, 64).transpose(1, 2).reshape(rows // TILE, 2 * kp)
    sm = torch.stack([scale, low], dim=-1).reshape(rows // TILE, TILE, kp // group_size, 2).transpose(1, 2)
    return qweight, sm


def _codes(packed: Int4Packed) -> torch.Tensor:
    """Unpack to int codes (out_features, Kp) in k order."""
    tiles, kp = packed.qweight.shape[0], packed.qweight.shape[1] // 2
    b = packed.qweight.reshape(tiles, kp // BLOCK, TILE, 32, 2).transpose(1, 2).reshape(tiles * TILE, -1, 32, 2)
    words = b[..., 0].to(torch.int32) | b[..., 1].to(torch.int32) << 8  # (np, blocks, 32)
    planes = torch.stack([(words >> (4 * j)) & 0xF for j in range(4)], dim=2)  # (np, blocks, 4, 32)
    return planes.reshape(tiles * TILE, kp)[: packed.out_features]


def _scales(packed: Int4Packed) -> torch.Tensor:
    """Scales and mins as float32 (out_features, Kp/G, 2)."""
    tiles, ng = packed.scales.shape[:2]
    return packed.scales.transpose(1, 2).reshape(tiles * TILE, ng, 2)[: packed.out_features].to(torch.float32)


def dequantize_int4(packed: Int4Packed, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The (out_features, in_features) weight a packed tensor stands for, in plain torch.

    >>> w = torch.randn(4, 128)
    >>> bool((dequantize_int4(quantize_int4(w, 32)) - w).abs().max() < 0.5)
    True
    """
    q = _codes(packed).to(torch.float32)
    n, kp = q.shape
    sm = _scales(packed)
    g = q.reshape(n, kp // packed.group_size, packed.group_size)
    w = g * sm[..., 0:1] + sm[..., 1:2]
    return w.reshape(n, kp)[:, : packed.in_features].to(dtype)


_scratch = threading.local()
WORKSPACE_MAX_BYTES = 256 * 2**20  # the largest GLM-4-9B layer (gate_up, 27392 x 4096) in bf16 is 224 MiB


def _workspace(n: int, k: int) -> torch.Tensor:
    """A reused bf16 (n, k) buffer for the dequantized weight of the prefill path.

    A fresh tensor per call costs more in page faults than the dequantization itself; layers run
    one after another, so one buffer per thread, grown to the largest layer, serves them all.
    """
    if n * k * 2 > WORKSPACE_MAX_BYTES:
        return torch.empty(n, k, dtype=torch.bfloat16)
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.numel() < n * k:
        buf = _scratch.buf = torch.empty(n * k, dtype=torch.bfloat16)
    return buf[: n * k].view(n, k)


def int4_linear(
    x: torch.Tensor, packed: Int4Packed, bias: torch.Tensor | None = None, *, use_kernel: bool = True,
    dense_min_rows: int = DENSE_MIN_ROWS,
) -> torch.Tensor:
    """`x @ dequant(W).T + bias` for x of shape (..., in_features) in float32/bfloat16/float16.

    Decode-sized inputs use the compiled kernel; `dense_min_rows` rows or more dequantize into bf16
    and use a dense matmul. `use_kernel=False` forces the torch-only path (tests compare the two).

    >>> p = quantize_int4(torch.randn(16, 256), 128)
    >>> int4_linear(torch.randn(2, 3, 256, dtype=torch.bfloat16), p).shape
    torch.Size([2, 3, 16])
    """
    if x.shape[-1] != packed.in_features:
        raise ValueError(f"x has {x.shape[-1]} features, the weight expects {packed.in_features}")
    # The compiled kernel is CPU-only; elsewhere (CUDA) the dequantized weight goes to a dense matmul.
    ops = extension.load() if use_kernel and x.device.type == "cpu" else None
    rows = x.numel() // max(x.shape[-1], 1)
    if ops is not None and rows < dense_min_rows:
        return ops.int4_mm(x, packed.qweight, packed.scales, packed.group_size, packed.out_features, bias)
    if ops is not None:
        w = ops.int4_dequantize_out(packed.qweight, packed.scales, packed.group_size,
                                    _workspace(packed.out_features, packed.in_features))
    else:
        w = dequantize_int4(packed, torch.bfloat16)
    b = bias.to(torch.bfloat16) if bias is not None else None
    return nn.functional.linear(x.to(torch.bfloat16), w, b).to(x.dtype)


def _torch_int4pack(packed: Int4Packed) -> tuple[torch.Tensor, torch.Tensor]:
    """The same weight in torch's `_weight_int4pack_mm_for_cpu` format: (packed codes, scales_and_zeros).

    torch decodes `(q - 8) * scale + zero`, so zero = min + 8 * scale; it wants N in multiples of 16.
    """
    q = _codes(packed)
    sm = _scales(packed)
    n, kp = q.shape
    pad = -n % 16
    if pad:
        q = torch.cat([q, q.new_zeros(pad, kp)])
        sm = torch.cat([sm, sm.new_zeros(pad, *sm.shape[1:])])
    codes = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.contiguous(), 2)
    sz = torch.stack([sm[..., 0], sm[..., 1] + 8 * sm[..., 0]], dim=-1).transpose(0, 1)
    return codes, sz.contiguous().to(torch.bfloat16)


class Int4Linear(nn.Module):
    """A drop-in `nn.Linear` replacement holding INT4 weights (`qweight`, `scales` buffers).

    Forward: `int4_linear` with the compiled kernel; without it (no compiler), torch's own packed
    `_weight_int4pack_mm_for_cpu` for decode (converted once, on first use, with bf16 scales) and
    a torch dequantize + bf16 matmul for prefill.

        >>> lin = nn.Linear(256, 64, bias=True)
        >>> q = Int4Linear.from_linear(lin, group_size=64)
        >>> q(torch.randn(1, 256)).shape
        torch.Size([1, 64])
        >>> q2 = Int4Linear(256, 64, group_size=64, bias=True)
        >>> q2.load_state_dict(q.state_dict())
        <All keys matched successfully>
    """

    # In a model, every multi-token call is a prefill and takes the dense path, whatever its length:
    # the two paths round differently (the dense one computes with bf16-rounded weights), and a
    # prompt must give the same greedy output whether part of it came from the KV cache or not.
    # (`int4_linear` alone switches at DENSE_MIN_ROWS, where the kernel stops being faster.)
    dense_min_rows: int = 2

    def __init__(self, in_features: int, out_features: int, group_size: int = 64, bias: bool = False) -> None:
        super().__init__()
        _check_group_size(group_size)
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        kp, tiles = _padded_width(in_features, group_size), -(-out_features // TILE)
        self.register_buffer("qweight", torch.zeros(tiles, 2 * kp, dtype=torch.uint8))
        self.register_buffer("scales", torch.zeros(tiles, kp // group_size, TILE, 2, dtype=torch.float16))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._fallback: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 64) -> Int4Linear:
        return cls.from_packed(quantize_int4(linear.weight, group_size), linear.bias)

    @classmethod
    def from_packed(cls, packed: Int4Packed, bias: torch.Tensor | None = None) -> Int4Linear:
        # The placeholder buffers go on the meta device: allocated and freed at once for every layer
        # (GLM-4-9B: 4.7 GB in 281 tensors), they fragmented the heap and left ~1.2 GiB resident.
        with torch.device("meta"):
            m = cls(packed.in_features, packed.out_features, packed.group_size, bias=bias is not None)
        m.qweight, m.scales = packed.qweight, packed.scales
        if bias is not None:
            m.bias = bias.detach().to(torch.float32).clone()
        return m

    @property
    def packed(self) -> Int4Packed:
        return Int4Packed(self.qweight, self.scales, self.group_size, self.in_features, self.out_features)

    def _load_from_state_dict(self, *args, **kwargs):  # new weights invalidate the fallback copy
        self._fallback = None
        super()._load_from_state_dict(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // max(x.shape[-1], 1)
        if extension.load() is not None or rows >= self.dense_min_rows or x.device.type != "cpu":
            return int4_linear(x, self.packed, self.bias, dense_min_rows=self.dense_min_rows)
        return self._torch_decode(x)

    def _torch_decode(self, x: torch.Tensor) -> torch.Tensor:
        if self._fallback is None:
            self._fallback = _torch_int4pack(self.packed)
        codes, sz = self._fallback
        kp = self.qweight.shape[1] // 2
        x2 = nn.functional.pad(x.reshape(-1, self.in_features).to(torch.bfloat16), (0, kp - self.in_features))
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, codes, self.group_size, sz)[:, : self.out_features]
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"group_size={self.group_size}, bias={self.bias is not None}")
