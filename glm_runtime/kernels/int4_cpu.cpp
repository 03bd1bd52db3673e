// INT4 weight-only matmul for CPU: y = x @ dequant(W).T, registered as torch.ops.glm_kernels.*.
//
// Packed layout (what glm_runtime/kernels/int4.py's quantize_int4 writes), for a weight (N, K):
//   Kp = K rounded up to a multiple of lcm(128, group_size); Np = N rounded up to a multiple of 4.
//   qweight  uint8 (Np/4, 2*Kp): rows go in tiles of 4; a tile stores, for each 128-wide block b of
//            k, the 64 bytes of row 0, row 1, row 2, row 3, so a tile is one sequential stream.
//            The 64 bytes of (row, block) are 32 little-endian uint16 words; nibble j (bits
//            4j..4j+3) of word i holds q[k = b*128 + j*32 + i], 0..15.
//   scales   float16 (Np/4, Kp/G, 4, 2): per tile, group and row, [scale, min]; w = scale * q + min.
//
// Why this shape: (0x4300 | q) read as bfloat16 is exactly 128 + q, so one ternary-logic op turns
// nibbles into bf16 weights and vdpbf16ps multiplies them with bf16 activations, 32 MACs an
// instruction. The 128 offset and the min fold into one scalar term per group:
//   sum_k x_k w_k = sum_g scale_g * sum_{k in g} x_k (128 + q_k) + (min_g - 128 scale_g) * sum_{k in g} x_k
// Activations are rounded to bf16 (W4A16); products and sums are fp32.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BF16__) && defined(__AVX512BW__)
#include <immintrin.h>
#define GLM_INT4_AVX512 1
#else
#define GLM_INT4_AVX512 0
#endif

namespace {

constexpr int64_t kBlock = 128;
// Bytes ahead in a tile's stream. One core needs many misses in flight to stream from DRAM: a
// decode token's sweep over all weights of the 1B shape (329 MB, one thread; builds of this file
// side by side, best of 15) took 11.5-12.1 ms at 8 KiB against 13.8-14.1 ms at 2 KiB; 4 KiB fell
// in between and 12-32 KiB were no better.
constexpr int64_t kPrefetch = 8192;

inline float half_to_float(const at::Half h) { return static_cast<float>(h); }

inline uint16_t float_to_bf16_bits(float f) {
  c10::BFloat16 b(f);  // round to nearest even, as torch's .to(torch.bfloat16)
  return b.x;
}

inline float bf16_bits_to_float(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Activations, rounded to bf16 and zero-padded to Kp, with per-group sums of the rounded values.
struct PreparedX {
  std::vector<uint16_t> bits;  // (n, Kp)
  std::vector<float> gsum;     // (n, Kp / G)
};

PreparedX prepare_x(const at::Tensor& x2d, int64_t Kp, int64_t G) {
  const int64_t n = x2d.size(0), K = x2d.size(1), ng = Kp / G;
  PreparedX p;
  p.bits.assign(n * Kp, 0);
  p.gsum.assign(n * ng, 0.f);
  at::Tensor xb = x2d.scalar_type() == at::kBFloat16 ? x2d : x2d.to(at::kBFloat16);
  xb = xb.contiguous();
  const uint16_t* src = reinterpret_cast<const uint16_t*>(xb.data_ptr<at::BFloat16>());
  at::parallel_for(0, n, 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      std::memcpy(&p.bits[i * Kp], src + i * K, K * sizeof(uint16_t));
      for (int64_t g = 0; g < ng; ++g) {
        float s = 0.f;
        for (int64_t k = g * G; k < (g + 1) * G; ++k) s += bf16_bits_to_float(p.bits[i * Kp + k]);
        p.gsum[i * ng + g] = s;
      }
    }
  });
  return p;
}

struct Problem {
  const uint8_t* w;      // (Np/4, 2*Kp)
  const at::Half* s;     // (Np/4, ng, 4, 2)
  const uint16_t* x;     // (n, Kp) bf16 bits
  const float* xs;       // (n, ng)
  float* y;              // (n, N)
  int64_t n, N, Kp, G, ng;

  const uint8_t* block(int64_t row, int64_t b) const { return w + (row / 4) * 2 * Kp + b * 256 + (row % 4) * 64; }
  const at::Half* scale(int64_t row, int64_t g) const { return s + ((row / 4) * ng + g) * 8 + (row % 4) * 2; }
};

#if GLM_INT4_AVX512

inline float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }

// XR activation rows times WR weight rows; PPG = 32-wide planes per group when G <= 128
// (1, 2 or 4), with G > 128 handled as 4 and flushed every G/128 blocks.
template <int XR, int PPG>
void tile_avx512(const Problem& p, int64_t i0, int64_t r0) {
  constexpr int WR = 4;
  const __m512i nib = _mm512_set1_epi16(0x000F);
  const __m512i expo = _mm512_set1_epi16(0x4300);
  const int64_t nblocks = p.Kp / kBlock;
  const int64_t bpg = PPG == 4 ? p.G / kBlock : 1;
  __m512 tot[XR][WR], acc[XR][WR];
  __m256 off[XR];  // lanes 2r, 2r+1: sum over groups of (min - 128 scale) * sum(x) for row r
  for (int i = 0; i < XR; ++i) {
    off[i] = _mm256_setzero_ps();
    for (int r = 0; r < WR; ++r) {
      tot[i][r] = _mm512_setzero_ps();
      acc[i][r] = _mm512_setzero_ps();
    }
  }
  const __m256 k128 = _mm256_set1_ps(128.f);
  auto flush = [&](int64_t g) {
    // The tile's 4 (scale, min) pairs of group g are 16 contiguous bytes: one conversion for all.
    const __m256 sm = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p.scale(r0, g))));
    const __m256 bias = _mm256_fnmadd_ps(k128, _mm256_moveldup_ps(sm), _mm256_movehdup_ps(sm));
    const __m512 sm512 = _mm512_castps256_ps512(sm);
    for (int i = 0; i < XR; ++i)
      off[i] = _mm256_fmadd_ps(bias, _mm256_set1_ps(p.xs[(i0 + i) * p.ng + g]), off[i]);
    for (int r = 0; r < WR; ++r) {
      const __m512 vs = _mm512_permutexvar_ps(_mm512_set1_epi32(2 * r), sm512);
      for (int i = 0; i < XR; ++i) {
        tot[i][r] = _mm512_fmadd_ps(acc[i][r], vs, tot[i][r]);
        acc[i][r] = _mm512_setzero_ps();
      }
    }
  };
  for (int64_t b = 0; b < nblocks; ++b) {
    __m512bh xv[XR][4];
    for (int i = 0; i < XR; ++i)
      for (int j = 0; j < 4; ++j)
        xv[i][j] = (__m512bh)_mm512_loadu_si512(p.x + (i0 + i) * p.Kp + b * kBlock + j * 32);
    __m512i wv[WR];
    const uint8_t* src = p.block(r0, b);
    // A tile is one sequential stream; fetching well ahead keeps two of them saturating memory.
    _mm_prefetch(reinterpret_cast<const char*>(src + kPrefetch), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(src + kPrefetch + 64), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(src + kPrefetch + 128), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(src + kPrefetch + 192), _MM_HINT_T0);
    for (int r = 0; r < WR; ++r) wv[r] = _mm512_loadu_si512(src + r * 64);
    for (int j = 0; j < 4; ++j) {
      for (int r = 0; r < WR; ++r) {
        // (w >> 4j) & 0xF | 0x4300: ternary-logic 0xEA is (a & b) | c.
        const __m512i wj = _mm512_ternarylogic_epi32(_mm512_srli_epi16(wv[r], 4 * j), nib, expo, 0xEA);
        for (int i = 0; i < XR; ++i) acc[i][r] = _mm512_dpbf16_ps(acc[i][r], (__m512bh)wj, xv[i][j]);
      }
      if (PPG < 4 && (j + 1) % PPG == 0) flush((b * 4 + j) / PPG);
    }
    if (PPG == 4 && (b + 1) % bpg == 0) flush(b / bpg);
  }
  for (int i = 0; i < XR; ++i) {
    alignas(32) float o[8];
    _mm256_store_ps(o, off[i]);
    for (int r = 0; r < WR && r0 + r < p.N; ++r) p.y[(i0 + i) * p.N + r0 + r] = hsum(tot[i][r]) + o[2 * r];
  }
}

// Tiles tb..te of 4 weight rows. Weight tiles outer, activation rows inner: a tile is read from
// memory once and reused from cache by every activation row.
template <int PPG>
void run_avx512(const Problem& p, int64_t tb, int64_t te) {
  for (int64_t t = tb; t < te; ++t) {
    int64_t i = 0;
    for (; i + 4 <= p.n; i += 4) tile_avx512<4, PPG>(p, i, t * 4);
    for (; i < p.n; ++i) tile_avx512<1, PPG>(p, i, t * 4);
  }
}

#endif  // GLM_INT4_AVX512

// Codes of one weight row as floats, in k order.
void unpack_row(const Problem& p, int64_t row, float* out) {
  for (int64_t b = 0; b < p.Kp / kBlock; ++b) {
    const uint8_t* w = p.block(row, b);
    for (int64_t wi = 0; wi < 32; ++wi) {
      const uint32_t word = w[2 * wi] | (w[2 * wi + 1] << 8);
      for (int j = 0; j < 4; ++j) out[b * kBlock + j * 32 + wi] = static_cast<float>((word >> (4 * j)) & 0xF);
    }
  }
}

// Portable path: the same arithmetic in scalar C++, for CPUs without AVX-512 BF16.
void run_generic(const Problem& p, int64_t tb, int64_t te) {
  std::vector<float> wrow(p.Kp);
  for (int64_t r = tb * 4; r < std::min(te * 4, p.N); ++r) {
    unpack_row(p, r, wrow.data());
    for (int64_t i = 0; i < p.n; ++i) {
      float y = 0.f;
      for (int64_t g = 0; g < p.ng; ++g) {
        const at::Half* sm = p.scale(r, g);
        float d = 0.f;
        for (int64_t k = g * p.G; k < (g + 1) * p.G; ++k) d += wrow[k] * bf16_bits_to_float(p.x[i * p.Kp + k]);
        y += half_to_float(sm[0]) * d + half_to_float(sm[1]) * p.xs[i * p.ng + g];
      }
      p.y[i * p.N + r] = y;
    }
  }
}

// Validates the packed tensors against (N, group_size) and returns Kp.
int64_t check_packed(const at::Tensor& qweight, const at::Tensor& scales, int64_t group_size, int64_t N) {
  TORCH_CHECK(group_size >= 32 && (group_size % 32 == 0) &&
                  (group_size <= 128 ? 128 % group_size == 0 : group_size % 128 == 0),
              "group_size must be 32, 64, 128 or a multiple of 128, got ", group_size);
  TORCH_CHECK(qweight.device().is_cpu() && scales.device().is_cpu(), "packed weights must be on the CPU");
  TORCH_CHECK(qweight.dim() == 2 && qweight.scalar_type() == at::kByte && qweight.is_contiguous(),
              "qweight must be a contiguous uint8 (Np/4, 2*Kp) tensor");
  const int64_t tiles = qweight.size(0), Kp = qweight.size(1) / 2;
  TORCH_CHECK(Kp % kBlock == 0 && Kp % group_size == 0, "packed K (", Kp, ") is not a whole number of blocks");
  TORCH_CHECK(N > (tiles - 1) * 4 && N <= tiles * 4, "out_features ", N, " does not match ", tiles, " row tiles");
  TORCH_CHECK(scales.scalar_type() == at::kHalf && scales.is_contiguous() &&
                  scales.sizes() == at::IntArrayRef({tiles, Kp / group_size, 4, 2}),
              "scales must be a contiguous float16 (Np/4, Kp/G, 4, 2) tensor");
  return Kp;
}

at::Tensor int4_mm(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales, int64_t group_size,
                   int64_t N, const c10::optional<at::Tensor>& bias) {
  const int64_t Kp = check_packed(qweight, scales, group_size, N);
  TORCH_CHECK(x.device().is_cpu(), "x must be on the CPU");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf,
              "x must be float32, bfloat16 or float16");
  const int64_t K = x.size(-1);
  TORCH_CHECK(K <= Kp && Kp - K < std::max<int64_t>(kBlock, group_size), "x has ", K,
              " features but the packed weight holds ", Kp);
  at::Tensor x2d = x.reshape({-1, K});
  const int64_t n = x2d.size(0);
  at::Tensor y = at::empty({n, N}, x.options().dtype(at::kFloat));
  if (n > 0) {
    PreparedX px = prepare_x(x2d, Kp, group_size);
    Problem p{qweight.data_ptr<uint8_t>(), scales.data_ptr<at::Half>(), px.bits.data(), px.gsum.data(),
              y.data_ptr<float>(), n, N, Kp, group_size, Kp / group_size};
    at::parallel_for(0, qweight.size(0), 1, [&](int64_t tb, int64_t te) {
#if GLM_INT4_AVX512
      if (group_size == 32) run_avx512<1>(p, tb, te);
      else if (group_size == 64) run_avx512<2>(p, tb, te);
      else run_avx512<4>(p, tb, te);
#else
      run_generic(p, tb, te);
#endif
    });
  }
  if (bias.has_value() && bias->defined()) y.add_(*bias);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = N;
  return y.to(x.scalar_type()).reshape(shape);
}

template <typename T>
void dequantize_rows(const Problem& p, T* o, int64_t K, int64_t rb, int64_t re) {
  std::vector<float> row(p.Kp);
  for (int64_t r = rb; r < re; ++r) {
    unpack_row(p, r, row.data());
    for (int64_t g = 0; g < p.ng; ++g) {
      const at::Half* sm = p.scale(r, g);
      const float sc = half_to_float(sm[0]), mn = half_to_float(sm[1]);
      for (int64_t k = g * p.G; k < (g + 1) * p.G; ++k) row[k] = sc * row[k] + mn;
    }
    T* orow = o + r * K;
    for (int64_t k = 0; k < K; ++k) orow[k] = static_cast<T>(row[k]);
  }
}

#if GLM_INT4_AVX512
// bf16 output, vectorized: the prefill path dequantizes a whole layer per call, so this is on the
// critical path of every long prompt.
void dequantize_rows_bf16_avx512(const Problem& p, at::BFloat16* o, int64_t K, int64_t rb, int64_t re) {
  const __m512i nib = _mm512_set1_epi16(0x000F);
  const __m512i expo = _mm512_set1_epi16(0x4300);
  std::vector<uint16_t> row(p.Kp);
  for (int64_t r = rb; r < re; ++r) {
    for (int64_t b = 0; b < p.Kp / kBlock; ++b) {
      const __m512i wv = _mm512_loadu_si512(p.block(r, b));
      for (int j = 0; j < 4; ++j) {
        const int64_t k0 = b * kBlock + j * 32;
        const at::Half* sm = p.scale(r, k0 / p.G);
        const float sc = half_to_float(sm[0]), mn = half_to_float(sm[1]);
        const __m512 vs = _mm512_set1_ps(sc), vm = _mm512_set1_ps(mn - 128.f * sc);
        const __m512i wj = _mm512_ternarylogic_epi32(_mm512_srli_epi16(wv, 4 * j), nib, expo, 0xEA);
        // bf16 -> fp32 is a 16-bit shift: (128 + q) exactly, then scale * (128 + q) + (min - 128 scale).
        const __m512 lo = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(wj)), 16));
        const __m512 hi = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(wj, 1)), 16));
        const __m512bh out = _mm512_cvtne2ps_pbh(_mm512_fmadd_ps(hi, vs, vm), _mm512_fmadd_ps(lo, vs, vm));
        _mm512_storeu_si512(row.data() + k0, (__m512i)out);
      }
    }
    std::memcpy(o + r * K, row.data(), K * sizeof(uint16_t));
  }
}
#endif

// Dequantize into `out` (N, K), float32/bfloat16/float16, for the prefill path's dense matmul.
// Callers reuse `out` across layers: a fresh 50 MB tensor per call costs more in page faults than
// the dequantization itself.
at::Tensor& int4_dequantize_out(const at::Tensor& qweight, const at::Tensor& scales, int64_t group_size,
                                at::Tensor& out) {
  TORCH_CHECK(out.dim() == 2 && out.is_contiguous() && out.device().is_cpu(), "out must be a contiguous (N, K) CPU tensor");
  const int64_t N = out.size(0), K = out.size(1);
  const int64_t Kp = check_packed(qweight, scales, group_size, N);
  TORCH_CHECK(K <= Kp, "K larger than the packed width");
  const at::ScalarType dtype = out.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "out must be float32, bfloat16 or float16");
  Problem p{qweight.data_ptr<uint8_t>(), scales.data_ptr<at::Half>(), nullptr, nullptr, nullptr,
            0, N, Kp, group_size, Kp / group_size};
  at::parallel_for(0, N, 16, [&](int64_t rb, int64_t re) {
    if (dtype == at::kFloat) dequantize_rows(p, out.data_ptr<float>(), K, rb, re);
#if GLM_INT4_AVX512
    else if (dtype == at::kBFloat16) dequantize_rows_bf16_avx512(p, out.data_ptr<at::BFloat16>(), K, rb, re);
#else
    else if (dtype == at::kBFloat16) dequantize_rows(p, out.data_ptr<at::BFloat16>(), K, rb, re);
#endif
    else dequantize_rows(p, out.data_ptr<at::Half>(), K, rb, re);
  });
  return out;
}

at::Tensor int4_dequantize(const at::Tensor& qweight, const at::Tensor& scales, int64_t group_size, int64_t N,
                           int64_t K, at::ScalarType dtype) {
  at::Tensor out = at::empty({N, K}, qweight.options().dtype(dtype));
  int4_dequantize_out(qweight, scales, group_size, out);
  return out;
}

bool has_avx512_bf16() { return GLM_INT4_AVX512; }

}  // namespace

TORCH_LIBRARY(glm_kernels, m) {
  m.def("int4_mm(Tensor x, Tensor qweight, Tensor scales, int group_size, int out_features, Tensor? bias=None) -> Tensor");
  m.def("int4_dequantize(Tensor qweight, Tensor scales, int group_size, int out_features, int in_features, ScalarType dtype) -> Tensor");
  m.def("int4_dequantize_out(Tensor qweight, Tensor scales, int group_size, Tensor(a!) out) -> Tensor(a!)");
  m.def("simd() -> int", []() -> int64_t { return has_avx512_bf16() ? 512 : 0; });
}

TORCH_LIBRARY_IMPL(glm_kernels, CPU, m) {
  m.impl("int4_mm", &int4_mm);
  m.impl("int4_dequantize", &int4_dequantize);
  m.impl("int4_dequantize_out", &int4_dequantize_out);
}
