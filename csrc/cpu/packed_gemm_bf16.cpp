// The bfloat16 variant of cpu/packed_gemm.cpp's kernel (GemmPrecision::kBfloat16): B packed
// as bfloat16 pairs, A's block converted to bfloat16 pairs as it is read (the "A panel"), and
// AVX512-BF16's vdpbf16ps multiplying two pairs per float32 lane and accumulating in float32.
// The same register blocking (8 rows x 3 panels = 24 accumulators), cache blocking and partial
// sums every kSumBlock products as the float32 kernel, so the float32 accumulation error is the
// same; only the operands are rounded (to nearest even, once each).
//
// Layouts. A bfloat16 pair is one 32-bit lane: bits 0-15 the value at k = 2kk, bits 16-31 the
// value at k = 2kk + 1 (vdpbf16ps adds both products into the lane). Packed B (pack_b with
// kBfloat16): panel p (16 columns) where the float32 panel starts (so every caller's panel
// offsets hold), its pair kk at + kk * 32 bf16 (lane c = the pair of column c), an odd K's last
// pair padded with a zero: the panel uses the first half of its float32 room. The A panel:
// row r's pairs contiguous.
#include "cpu/packed_gemm.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "cpu/gemm_store.h"
#define PYLSTM_HAVE_BF16_KERNEL 1
#endif

namespace pylstm {

bool cpu_has_avx512_bf16() {
#if defined(PYLSTM_HAVE_BF16_KERNEL)
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
  return has;
#else
  return false;
#endif
}

#if defined(PYLSTM_HAVE_BF16_KERNEL)

namespace {

// AMX (Intel's tile matrix unit: TDPBF16PS multiplies a 16 x 32 bfloat16 tile by a 32 x 16 one
// into 16 x 16 float32, 16 times the work of a vdpbf16ps): used when the CPU has AMX-BF16 and
// Linux grants the process the tile state (arch_prctl, asked once). Its B tile is exactly 16 of
// a packed panel's pairs and its A tile 16 pairs of 16 A-panel rows, so the layouts above serve
// both kernels.
std::atomic<bool> g_amx_enabled{true};

bool amx_available() {
  static const bool ok = [] {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    const bool tile = (d >> 24) & 1u, bf16 = (d >> 22) & 1u;
    if (!tile || !bf16) return false;
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
}

// Tiles 0-3: C (2 x 2 blocks of 16 x 16 float32); 4, 5: A (16 rows x 16 pairs); 6, 7: B (16
// pairs x 16 columns). Loaded once per thread (the configuration is per-thread state).
struct alignas(64) TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

__attribute__((target("amx-tile"))) void amx_configure_thread() {
  thread_local bool done = false;
  if (done) return;
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof cfg);  // (every unused and reserved byte must be zero)
  cfg.palette = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  // (GCC 12 does not count ldtilecfg as reading all 64 bytes and dropped the zeroing as dead
  // stores: the barrier keeps them)
  asm volatile("" : : "r"(&cfg) : "memory");
  _tile_loadconfig(&cfg);
  done = true;
}

// Pair index of vpermw: result word 2c = a's word c (row 2kk), 2c + 1 = a's word 16 + c (row
// 2kk + 1), a = vcvtne2ps2bf16(row 2kk + 1, row 2kk).
__attribute__((target("avx512f,avx512bw"))) inline __m512i pair_index() {
  alignas(64) uint16_t idx[32];
  for (int c = 0; c < 16; ++c) {
    idx[2 * c] = uint16_t(c);
    idx[2 * c + 1] = uint16_t(16 + c);
  }
  return _mm512_load_si512(idx);
}

// Rows lo, hi (16 floats each) -> their 16 bfloat16 pairs.
__attribute__((target("avx512f,avx512bw,avx512bf16"))) inline __m512i pairs_of(__m512 lo, __m512 hi,
                                                                             __m512i idx) {
  return _mm512_permutexvar_epi16(idx, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
}

__attribute__((target("avx512f,avx512bw,avx512bf16"))) void panel_to_bf16_avx512(float* panel, int64_t K) {
  const __m512i idx = pair_index();
  uint16_t* dst = reinterpret_cast<uint16_t*>(panel);
  // pair kk is written at byte 64 kk, after rows 2kk, 2kk + 1 (bytes from 128 kk) are read:
  // the writes never overtake the reads
  for (int64_t kk = 0; kk < K / 2; ++kk) {
    const __m512 lo = _mm512_loadu_ps(panel + 2 * kk * 16), hi = _mm512_loadu_ps(panel + (2 * kk + 1) * 16);
    _mm512_storeu_si512(dst + kk * 32, pairs_of(lo, hi, idx));
  }
  if (K & 1) {
    const __m512 lo = _mm512_loadu_ps(panel + (K - 1) * 16);
    _mm512_storeu_si512(dst + (K / 2) * 32, pairs_of(lo, _mm512_setzero_ps(), idx));
  }
}

constexpr int kMR = 8;
constexpr int kNP = 3;
constexpr int64_t kSumPairs = 64;  // partial sums every 128 products, as the float32 kernel

// A: the A panel, row r's pair kk at A[r * lda + kk], or with TA at A[kk * lda + r].
template <int MR, int NP, bool TA>
__attribute__((target("avx512f,avx512bf16"))) void micro_bf16(int64_t kp, const uint32_t* A, int64_t lda,
                                                               const uint16_t* B, int64_t pstride,
                                                               float* C, int64_t ldc, __mmask16 last_mask,
                                                               bool accumulate) {
  for (int64_t k0 = 0; k0 < kp || k0 == 0; k0 += kSumPairs) {
    const int64_t k1 = std::min(kp, k0 + kSumPairs);
    __m512 acc[MR][NP];
    for (int r = 0; r < MR; ++r)
      for (int p = 0; p < NP; ++p) acc[r][p] = _mm512_setzero_ps();
    for (int64_t kk = k0; kk < k1; ++kk) {
      __m512bh b[NP];
      for (int p = 0; p < NP; ++p) b[p] = (__m512bh)_mm512_loadu_si512(B + p * pstride + kk * 32);
      for (int r = 0; r < MR; ++r) {
        const __m512bh a = (__m512bh)_mm512_set1_epi32(int(TA ? A[kk * lda + r] : A[r * lda + kk]));
        for (int p = 0; p < NP; ++p) acc[r][p] = _mm512_dpbf16_ps(acc[r][p], a, b[p]);
      }
    }
    for (int r = 0; r < MR; ++r) {
      for (int p = 0; p < NP; ++p) {
        store_sums(C + r * ldc + p * 16, acc[r][p], p == NP - 1 ? last_mask : __mmask16(0xFFFF),
                   accumulate || k0 > 0);
      }
    }
  }
}

using MicroFn = void (*)(int64_t, const uint32_t*, int64_t, const uint16_t*, int64_t, float*, int64_t,
                         __mmask16, bool);

template <int MR, bool TA>
MicroFn pick_np(int np) {
  switch (np) {
    case 1: return &micro_bf16<MR, 1, TA>;
    case 2: return &micro_bf16<MR, 2, TA>;
    default: return &micro_bf16<MR, 3, TA>;
  }
}

template <bool TA>
MicroFn pick(int mr, int np) {
  switch (mr) {
    case 1: return pick_np<1, TA>(np);
    case 2: return pick_np<2, TA>(np);
    case 3: return pick_np<3, TA>(np);
    case 4: return pick_np<4, TA>(np);
    case 5: return pick_np<5, TA>(np);
    case 6: return pick_np<6, TA>(np);
    case 7: return pick_np<7, TA>(np);
    default: return pick_np<8, TA>(np);
  }
}

// The A panel of rows [m0, m1) and k in [k0, k0 + kc), kc rounded up to even pairs (an odd
// last pair padded with a zero). Row-major A: row r's pairs at out + (r - m0) * pairs, converted
// 32 values at a time (a row's k values are already in pair order; rows `stride` pairs apart,
// default `pairs`). A stored transposed (TA:
// A[k * lda + r]): pair kk of rows m0.. at out + kk * (m1 - m0), 16 rows at a time from two
// source rows (vcvtne2ps2bf16, then vpermw into pairs).
template <bool TA>
__attribute__((target("avx512f,avx512bf16,avx512bw,avx512vl"))) void pack_a_bf16(int64_t m0, int64_t m1, int64_t k0,
                                                                          int64_t kc, const float* A, int64_t lda,
                                                                          uint32_t* out, int64_t stride = 0) {
  const int64_t pairs = (kc + 1) / 2;
  if constexpr (!TA) {
    if (stride == 0) stride = pairs;
    for (int64_t r = m0; r < m1; ++r) {
      uint32_t* dst = out + (r - m0) * stride;
      const float* src = A + r * lda + k0;
      int64_t k = 0;
      for (; k + 32 <= kc; k += 32) {  // (cvtne2ps puts its second operand in the low half)
        const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + k + 16), _mm512_loadu_ps(src + k));
        _mm512_storeu_si512(dst + k / 2, (__m512i)v);
      }
      for (; k < 2 * pairs; k += 2) {
        const float lo = src[k], hi = k + 1 < kc ? src[k + 1] : 0.0f;
        dst[k / 2] = uint32_t(bf16_round(lo)) | (uint32_t(bf16_round(hi)) << 16);
      }
    }
  } else {
    const int64_t width = m1 - m0;
    const __m512i idx = pair_index();
    for (int64_t kk = 0; kk < pairs; ++kk) {
      const float* lo = A + (k0 + 2 * kk) * lda;
      const float* hi = 2 * kk + 1 < kc ? lo + lda : nullptr;
      uint32_t* dst = out + kk * width;
      int64_t r = m0;
      for (; r + 16 <= m1; r += 16) {
        const __m512 h = hi ? _mm512_loadu_ps(hi + r) : _mm512_setzero_ps();
        const __m512i v = pairs_of(_mm512_loadu_ps(lo + r), h, idx);
        // (the 16 pairs are 32 words: pairs 0-15 in order)
        _mm512_storeu_si512(dst + (r - m0), v);
      }
      for (; r < m1; ++r) {
        dst[r - m0] = uint32_t(bf16_round(lo[r])) | (uint32_t(bf16_round(hi ? hi[r] : 0.0f)) << 16);
      }
    }
  }
}

}  // namespace

// C[rows, cols] (+)= a 16 x 16 float32 tile, stored through tmp (only the valid rows and columns
// of an edge tile reach C).
// (the tile intrinsics take their tile number as a literal)
__attribute__((target("amx-tile,avx512f"))) inline void amx_flush(int tile, float* C, int64_t ldc, int rows,
                                                                __mmask16 cols, bool add, float* tmp) {
  switch (tile) {
    case 0: _tile_stored(0, tmp, 64); break;
    case 1: _tile_stored(1, tmp, 64); break;
    case 2: _tile_stored(2, tmp, 64); break;
    default: _tile_stored(3, tmp, 64); break;
  }
  for (int r = 0; r < rows; ++r) store_sums(C + r * ldc, _mm512_load_ps(tmp + r * 16), cols, add);
}

// Pairs a tile accumulates before it is added to C: 512 products (the float32 error of such a
// sum, ~512 eps, is far below bfloat16's operand rounding; flushing every 128, as the
// vdpbf16ps kernel does, cost as much as the products).
constexpr int64_t kAmxSumPairs = 256;

// One 32 x 32 block of C (fewer valid rows / panels at the edges) over `total` pairs (a
// multiple of 16): tile products accumulated over kAmxSumPairs pairs, then added to C.
// a: the block's first A-panel row (row stride ap pairs, zero past the K block's pairs); b: its
// first panel (panel stride pstride bf16) for pairs below `full`; past it (the K block's last
// pairs < 16) the B tiles come from tail: the block's panels' last pairs copied and padded with
// zeros to 16 pairs (panel stride 512 bf16), so the last step stays on the tiles (a vdpbf16ps
// pass for those pairs read and wrote every C tile once more: at K = 100 the
// (700 x 100) @ (100 x 10000) product ran slower than float32).
__attribute__((target("amx-tile,amx-bf16,avx512f"))) void amx_block(int64_t total, int64_t full, const uint32_t* a,
                                                                    int64_t ap, const uint16_t* b, int64_t pstride,
                                                                    const uint16_t* tail, int np, int rows,
                                                                    __mmask16 last_mask, float* C, int64_t ldc,
                                                                    bool accumulate) {
  alignas(64) float tmp[256];
  const int rows0 = std::min(rows, 16), rows1 = std::max(0, rows - 16);
  const __mmask16 m0 = np == 1 ? last_mask : __mmask16(0xFFFF), m1 = last_mask;
  bool add = accumulate;
  for (int64_t s0 = 0; s0 < total; s0 += kAmxSumPairs) {
    const int64_t s1 = std::min(total, s0 + kAmxSumPairs);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t kk = s0; kk < s1; kk += 16) {
      const bool in_panel = kk < full;
      const uint16_t* b0 = in_panel ? b + kk * 32 : tail;
      const int64_t bstride = in_panel ? pstride : 512;
      _tile_loadd(4, a + kk, ap * 4);
      _tile_loadd(5, a + 16 * ap + kk, ap * 4);
      _tile_loadd(6, b0, 64);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(2, 5, 6);
      if (np == 2) {
        _tile_loadd(7, b0 + bstride, 64);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(3, 5, 7);
      }
    }
    amx_flush(0, C, ldc, rows0, m0, add, tmp);
    if (np == 2) amx_flush(1, C + 16, ldc, rows0, m1, add, tmp);
    if (rows1 > 0) {
      amx_flush(2, C + 16 * ldc, ldc, rows1, m0, add, tmp);
      if (np == 2) amx_flush(3, C + 16 * ldc + 16, ldc, rows1, m1, add, tmp);
    }
    add = true;
  }
}

// The AMX driver: A panels of row-major pairs (rows padded with zeros to a multiple of 32, and
// each row to whole 16-pair steps), 32 x 32 blocks on the tiles. Blocking as gemm_driver's
// (cpu/packed_gemm.cpp): row chunks as large as the A budget allows at this K, and at a short K
// the columns in L2-sized blocks walked by each 32-row block, so C is written in sequential runs.
template <bool TA>
void gemm_bf16_amx(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const uint16_t* B, float* C,
                   int64_t ldc, bool accumulate, const float* bias) {
  amx_configure_thread();
  const int64_t panels = (N + 15) / 16, pstride = K * 32;
  constexpr int64_t kKC = 1024, kShortK = 256, kShortBlock = 128 * 1024;
  const int64_t kc_max = std::min(K, kKC);
  const bool short_k = K <= kShortK;
  // (rows, at the A budget of 128 x 1024 bf16)
  const int64_t budget = short_k ? std::max<int64_t>(128, 128 * kKC / kc_max / 32 * 32) : 128;
  const int64_t mc = M <= budget ? M : budget;
  const int64_t mc32 = (mc + 31) / 32 * 32, ap_max = ((kc_max + 1) / 2 + 15) / 16 * 16;
  const int64_t block_panels = short_k ? std::max<int64_t>(2, kShortBlock / (K * 32) / 2 * 2) : panels;
  thread_local std::vector<uint32_t> abuf, tbuf;
  thread_local std::vector<uint16_t> tails;  // the K block's last pairs of every panel, padded
  if (abuf.size() < size_t(mc32 * ap_max)) abuf.resize(size_t(mc32 * ap_max));
  if (TA && tbuf.size() < size_t(mc * ((kc_max + 1) / 2))) tbuf.resize(size_t(mc * ((kc_max + 1) / 2)));
  if (tails.size() < size_t(panels * 512)) tails.resize(size_t(panels * 512));
  for (int64_t k0 = 0; k0 < K; k0 += kKC) {
    const int64_t kc = std::min(kKC, K - k0), pairs = (kc + 1) / 2, full = pairs / 16 * 16;
    const int64_t ap = (pairs + 15) / 16 * 16;  // A-panel row stride: whole 16-pair steps
    if (full < pairs) {
      std::fill(tails.begin(), tails.begin() + panels * 512, uint16_t(0));
      for (int64_t p = 0; p < panels; ++p) {
        std::memcpy(tails.data() + p * 512, B + p * pstride + (k0 / 2 + full) * 32, size_t(pairs - full) * 64);
      }
    }
    for (int64_t m0 = 0; m0 < M; m0 += mc) {
      const int64_t m1 = std::min(M, m0 + mc), rows = m1 - m0, rows32 = (rows + 31) / 32 * 32;
      if constexpr (TA) {  // pairs converted row by row of the source, then transposed here
        pack_a_bf16<true>(m0, m1, k0, kc, A, lda, tbuf.data());
        for (int64_t r = 0; r < rows; ++r) {
          uint32_t* dst = abuf.data() + r * ap;
          for (int64_t kk = 0; kk < pairs; ++kk) dst[kk] = tbuf[size_t(kk * rows + r)];
        }
      } else {
        pack_a_bf16<false>(m0, m1, k0, kc, A, lda, abuf.data(), ap);
      }
      for (int64_t r = 0; r < rows && ap > pairs; ++r) std::fill_n(abuf.data() + r * ap + pairs, ap - pairs, 0u);
      std::fill(abuf.data() + rows * ap, abuf.data() + rows32 * ap, 0u);
      walk_tiles(m0, m1, panels, block_panels, short_k, 2, 32, [&](int64_t p0, int64_t r0) {
        const int np = int(std::min<int64_t>(2, panels - p0));
        const uint16_t* b = B + p0 * pstride + k0 * 16;
        const int nr = int(std::min<int64_t>(32, m1 - r0));
        float* c = C + r0 * ldc + p0 * 16;
        const bool acc = start_tile(bias, accumulate, k0, N, p0, np, nr, c, ldc);
        amx_block(ap, full, abuf.data() + (r0 - m0) * ap, ap, b, pstride, tails.data() + p0 * 512, np, nr,
                  last_panel_mask(N, p0, np), c, ldc, acc);
      });
    }
  }
}

// C (M x N) = op(A) @ B, B packed by pack_b(..., kBfloat16): gemm_driver's blocking with the A
// panel converted per (row chunk, K block); on AMX when the CPU and the OS allow it.
template <bool TA>
void gemm_bf16_driver(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const uint16_t* B, float* C,
                      int64_t ldc, bool accumulate, const float* bias) {
  const int64_t panels = (N + 15) / 16, pstride = K * 32;  // (a float32 panel's room, in bf16)
  if (accumulate) bias = nullptr;
  if (empty_sum(M, N, K, C, ldc, accumulate, bias)) return;
  // A product of a few rows (a recurrent step at batch 1-4) goes to vdpbf16ps even with AMX:
  // a 32-row tile block is then almost all padding, and the step reads the weights at the
  // speed of memory either way (per step at (1 x 650) @ (650 x 2600): 230 us faster; the
  // (1,100,650,650) training step 41 -> 20 ms, float32's 41; at 8 rows AMX wins).
  constexpr int64_t kAmxMinRows = 5;
  if (M >= kAmxMinRows && g_amx_enabled.load() && amx_available()) {
    gemm_bf16_amx<TA>(M, N, K, A, lda, B, C, ldc, accumulate, bias);
    return;
  }
  constexpr int64_t kKC = 1024, kMC = 96;  // (even: a K block starts on a pair)
  const int64_t mc = M <= 128 ? M : kMC;
  thread_local std::vector<uint32_t> abuf;
  if (abuf.size() < size_t(mc * kKC / 2 + 1)) abuf.resize(size_t(mc * kKC / 2 + 1));
  for (int64_t k0 = 0; k0 < K; k0 += kKC) {
    const int64_t kc = std::min(kKC, K - k0), pairs = (kc + 1) / 2;
    for (int64_t m0 = 0; m0 < M; m0 += mc) {
      const int64_t m1 = std::min(M, m0 + mc);
      pack_a_bf16<TA>(m0, m1, k0, kc, A, lda, abuf.data());
      walk_tiles(m0, m1, panels, panels, false, kNP, kMR, [&](int64_t p0, int64_t r0) {
        const int np = int(std::min<int64_t>(kNP, panels - p0));
        const __mmask16 last_mask = last_panel_mask(N, p0, np);
        const int mr = int(std::min<int64_t>(kMR, m1 - r0));
        const uint16_t* b = B + p0 * pstride + k0 * 16;
        float* c = C + r0 * ldc + p0 * 16;
        const bool acc = start_tile(bias, accumulate, k0, N, p0, np, mr, c, ldc);
        if constexpr (TA) {
          pick<true>(mr, np)(pairs, abuf.data() + (r0 - m0), m1 - m0, b, pstride, c, ldc, last_mask, acc);
        } else {
          pick<false>(mr, np)(pairs, abuf.data() + (r0 - m0) * pairs, pairs, b, pstride, c, ldc, last_mask, acc);
        }
      });
    }
  }
}

template void gemm_bf16_driver<false>(int64_t, int64_t, int64_t, const float*, int64_t, const uint16_t*, float*,
                                      int64_t, bool, const float*);
template void gemm_bf16_driver<true>(int64_t, int64_t, int64_t, const float*, int64_t, const uint16_t*, float*,
                                     int64_t, bool, const float*);

bool amx_bf16_enabled() { return g_amx_enabled.load() && amx_available(); }

bool amx_prepare_thread() {
  if (!amx_available()) return false;
  amx_configure_thread();
  return true;
}

bool set_amx_bf16_enabled(bool on) { return g_amx_enabled.exchange(on); }

void panel_to_bf16(float* panel, int64_t K) {
  if (cpu_has_avx512_bf16()) {
    panel_to_bf16_avx512(panel, K);
    return;
  }
  uint16_t* dst = reinterpret_cast<uint16_t*>(panel);  // (the same, one value at a time)
  for (int64_t kk = 0; kk < (K + 1) / 2; ++kk) {
    uint16_t pair[32];
    for (int c = 0; c < 16; ++c) {
      pair[2 * c] = bf16_round(panel[2 * kk * 16 + c]);
      pair[2 * c + 1] = 2 * kk + 1 < K ? bf16_round(panel[(2 * kk + 1) * 16 + c]) : uint16_t(0);
    }
    std::copy(pair, pair + 32, dst + kk * 32);
  }
}

#else

bool amx_bf16_enabled() { return false; }
bool set_amx_bf16_enabled(bool) { return false; }
bool amx_prepare_thread() { return false; }
void panel_to_bf16(float*, int64_t) {}

template <bool TA>
void gemm_bf16_driver(int64_t, int64_t, int64_t, const float*, int64_t, const uint16_t*, float*, int64_t, bool,
                      const float*) {}
template void gemm_bf16_driver<false>(int64_t, int64_t, int64_t, const float*, int64_t, const uint16_t*, float*,
                                      int64_t, bool, const float*);
template void gemm_bf16_driver<true>(int64_t, int64_t, int64_t, const float*, int64_t, const uint16_t*, float*,
                                     int64_t, bool, const float*);

#endif

}  // namespace pylstm
