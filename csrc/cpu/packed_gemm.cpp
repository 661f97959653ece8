// The AVX-512 micro-kernel and driver of cpu/packed_gemm.h. Register blocking: up to 8 rows of A
// times 3 panels (48 columns) of B = 24 zmm accumulators; per k, 3 panel loads, 8 broadcasts
// and 24 FMAs, so the two 512-bit FMA pipes stay busy. The driver blocks K (1024) and the rows
// (96) for L2 and walks 48-column slabs of B inside a row chunk, so each slab is read from
// memory once per row chunk and then hit in L1/L2 by every 8-row block (at a short K, each 8-row
// block walks an L2-sized block of slabs instead, so C is written in runs). A may be row-major or
// stored transposed (the weight gradient); B is always packed (pack_b / pack_b_rows).
#include "cpu/packed_gemm.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#include "cpu/gemm_store.h"
#define PYLSTM_HAVE_AVX512_KERNEL 1
#endif

namespace pylstm {

namespace {
std::atomic<bool> g_enabled{true};

bool cpu_has_avx512() {
#if defined(PYLSTM_HAVE_AVX512_KERNEL)
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
#else
  return false;
#endif
}
}  // namespace

bool packed_gemm_enabled() { return g_enabled.load() && cpu_has_avx512(); }

bool set_packed_gemm_enabled(bool on) { return g_enabled.exchange(on); }

#if defined(PYLSTM_HAVE_AVX512_KERNEL)

namespace {

constexpr int kMR = 8;  // rows per micro-tile
constexpr int kNP = 3;  // 16-column panels per micro-tile

// acc[r][p] += A[r][k] * B[k][16p .. 16p+15] over k; then C = acc, or C += acc when
// accumulating (masked on the last panel). B's panel p, row k is at B + p*pstride + k*kstride:
// packed panels (pstride = K*16, kstride = 16) or a row-major matrix (pstride = 16,
// kstride = ldb; the masked load keeps the last panel inside the matrix). A is row-major
// (A[r*lda + k]) or, with TA, stored transposed (A[k*lda + r]).
// The accumulators go to C every kSumBlock values of k: each sum runs sequentially over at
// most kSumBlock products and C adds K / kSumBlock partial sums, so the float32 rounding error
// grows like kSumBlock + K / kSumBlock rather than K. NumPy's per-step products sum over short
// runs (N rows a step, then T steps); the weight gradient here sums N*T rows in one GEMM, and
// with one running sum its error was 2-5x NumPy's at (20,35,64,64)-like shapes (the accuracy
// rule allows at most 2x). The C tile is in L1 after the first flush: a few % of the kernel's time.
constexpr int64_t kSumBlock = 128;

template <int MR, int NP, bool TA, bool PACKED>
__attribute__((target("avx512f"))) void micro_kernel(int64_t K, const float* A, int64_t lda,
                                                     const float* B, int64_t pstride,
                                                     int64_t kstride, float* C, int64_t ldc,
                                                     __mmask16 last_mask, bool accumulate) {
  if constexpr (PACKED) kstride = 16;  // a compile-time stride keeps the loop tight
  for (int64_t k0 = 0; k0 < K || k0 == 0; k0 += kSumBlock) {
    const int64_t k1 = std::min(K, k0 + kSumBlock);
    __m512 acc[MR][NP];
    for (int r = 0; r < MR; ++r)
      for (int p = 0; p < NP; ++p) acc[r][p] = _mm512_setzero_ps();
    for (int64_t k = k0; k < k1; ++k) {
      __m512 b[NP];
      const float* bk = B + k * kstride;
      for (int p = 0; p < NP - 1; ++p) b[p] = _mm512_loadu_ps(bk + p * pstride);
      if constexpr (PACKED) {  // padded with zeros: no mask needed
        b[NP - 1] = _mm512_loadu_ps(bk + (NP - 1) * pstride);
      } else {
        b[NP - 1] = _mm512_maskz_loadu_ps(last_mask, bk + (NP - 1) * pstride);
      }
      for (int r = 0; r < MR; ++r) {
        const __m512 a = _mm512_set1_ps(TA ? A[k * lda + r] : A[r * lda + k]);
        for (int p = 0; p < NP; ++p) acc[r][p] = _mm512_fmadd_ps(a, b[p], acc[r][p]);
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

using MicroFn = void (*)(int64_t, const float*, int64_t, const float*, int64_t, int64_t, float*,
                         int64_t, __mmask16, bool);

template <int MR, bool TA, bool PK>
MicroFn pick_np(int np) {
  switch (np) {
    case 1: return &micro_kernel<MR, 1, TA, PK>;
    case 2: return &micro_kernel<MR, 2, TA, PK>;
    default: return &micro_kernel<MR, 3, TA, PK>;
  }
}

template <bool TA, bool PK>
MicroFn pick(int mr, int np) {
  switch (mr) {
    case 1: return pick_np<1, TA, PK>(np);
    case 2: return pick_np<2, TA, PK>(np);
    case 3: return pick_np<3, TA, PK>(np);
    case 4: return pick_np<4, TA, PK>(np);
    case 5: return pick_np<5, TA, PK>(np);
    case 6: return pick_np<6, TA, PK>(np);
    case 7: return pick_np<7, TA, PK>(np);
    default: return pick_np<8, TA, PK>(np);
  }
}

// Copies rows [m0, m1) x columns [k0, k0 + kc) of A^T (A stored (K, M), lda) into 8-row
// tiles, tile t holding A^T[m0 + 8t + r][k0 + k] at out[t*kc*8 + k*8 + r] (a short last tile
// holds only its mr rows: its kernel reads no others). That is the transposed layout with
// lda = 8, so the micro-kernel's broadcasts walk one contiguous stream.
__attribute__((target("avx512f"))) void pack_at(int64_t m0, int64_t m1, int64_t k0, int64_t kc,
                                                const float* A, int64_t lda, float* out) {
  for (int64_t r0 = m0; r0 < m1; r0 += kMR) {
    const __mmask16 m = __mmask16((1u << std::min<int64_t>(kMR, m1 - r0)) - 1u);
    float* dst = out + (r0 - m0) * kc;
    for (int64_t k = 0; k < kc; ++k) {
      _mm512_mask_storeu_ps(dst + k * kMR, m, _mm512_maskz_loadu_ps(m, A + (k0 + k) * lda + r0));
    }
  }
}

// C (M x N) = op(A) @ B with the blocking described below; see micro_kernel for the layouts.
template <bool TA, bool PK>
void gemm_driver(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
                 int64_t pstride, int64_t kstride, float* C, int64_t ldc, bool accumulate,
                 const float* bias) {
  const int64_t panels = (N + 15) / 16;
  if (accumulate) bias = nullptr;
  if (empty_sum(M, N, K, C, ldc, accumulate, bias)) return;
  // Blocking for the caches: K in blocks of kKC (a 48-column slab of B, kKC x 48 floats = 192 KB,
  // stays in L2 while a row chunk passes), rows in chunks of kMC (an A block of kMC x kKC
  // floats = 384 KB stays in L2 while every slab passes). The recurrent step (M = batch,
  // K = H or 4H) is one or a few blocks; the later K blocks accumulate into C.
  constexpr int64_t kKC = 1024, kMC = 96;
  // The transposed A of the weight gradient ([X | H_prev]^T, stored (K, M)) is copied into
  // 8-row tiles first when its stored rows lie a multiple of 512 bytes apart (D + H a multiple
  // of 128): the kc rows a block's broadcasts walk then map to at most 8 of L1's 64 sets, and
  // evict each other before the next row tile reads the other half of their cache lines. At
  // other strides, and for row-major A, the copy costs more than it saves
  // (benchmarks/RESULTS.md has the measurements).
  const bool pack = TA && M >= 128 && lda % 128 == 0;
  // A short K (at most kShortK: the output layer's x @ W + b at K = D) gives each C tile little
  // work, and the writes of C dominate: walking a slab down all the rows wrote one 192-byte
  // piece per row of C, 700 rows in 700 pages, and ran at 2/3 of OpenBLAS's speed on
  // (700 x 100) @ (100 x 10000). There the columns go in blocks whose B panels fit kShortBlock
  // bytes (in L2), each 8-row block walks a block's slabs, writing 8 sequential runs of C, and
  // a row chunk holds as many rows as the A block's budget (kMC x kKC floats) allows at this K,
  // so B is streamed once per chunk of up to 960 rows instead of once per 96. Otherwise up to
  // 128 rows go in one chunk: a second chunk of a few rows (M = 100: 96 + 4) would stream all of
  // B again for little work (measured on the Affine layer's dW = x^T dS, M = 100). Neither the
  // order nor the chunks change any sum.
  constexpr int64_t kShortK = 256, kShortBlock = 256 * 1024;
  const bool short_k = K <= kShortK;
  const int64_t kc_max = std::min(K, kKC);
  const int64_t budget = short_k ? std::max<int64_t>(128, kMC * kKC / kc_max / kMR * kMR) : 128;
  const int64_t mc = M <= budget ? M : (short_k ? budget : kMC);
  thread_local std::vector<float> abuf;
  const int64_t mc8 = (mc + kMR - 1) / kMR * kMR;  // (pack_at's tiles: whole 8-row tiles of room)
  if (pack && abuf.size() < size_t(mc8 * kc_max)) abuf.resize(size_t(mc8 * kc_max));
  const int64_t block_panels =
      short_k ? std::max<int64_t>(kNP, kShortBlock / (K * 64) / kNP * kNP) : panels;
  for (int64_t k0 = 0; k0 < K; k0 += kKC) {
    const int64_t kc = std::min(kKC, K - k0);
    for (int64_t m0 = 0; m0 < M; m0 += mc) {
      const int64_t m1 = std::min(M, m0 + mc);
      if (pack) pack_at(m0, m1, k0, kc, A, lda, abuf.data());
      // One micro-tile: rows [r0, r0 + 8) x the slab at panel p0.
      walk_tiles(m0, m1, panels, block_panels, short_k, kNP, kMR, [&](int64_t p0, int64_t r0) {
        const int np = int(std::min<int64_t>(kNP, panels - p0));
        const __mmask16 last_mask = last_panel_mask(N, p0, np);
        const int mr = int(std::min<int64_t>(kMR, m1 - r0));
        const float* b = B + p0 * pstride + k0 * kstride;
        float* c = C + r0 * ldc + p0 * 16;
        const bool acc = start_tile(bias, accumulate, k0, N, p0, np, mr, c, ldc);
        if (pack) {
          pick<true, PK>(mr, np)(kc, abuf.data() + (r0 - m0) * kc, kMR, b, pstride, kstride, c,
                                 ldc, last_mask, acc);
        } else {
          const float* a = TA ? A + k0 * lda + r0 : A + r0 * lda + k0;
          pick<TA, PK>(mr, np)(kc, a, lda, b, pstride, kstride, c, ldc, last_mask, acc);
        }
      });
    }
  }
}

}  // namespace

void gemm_packed_b(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* Bp,
                   float* C, int64_t ldc, bool accumulate, const float* bias, GemmPrecision prec) {
  if (prec == GemmPrecision::kBfloat16) {
    gemm_bf16_driver<false>(M, N, K, A, lda, reinterpret_cast<const uint16_t*>(Bp), C, ldc, accumulate, bias);
    return;
  }
  gemm_driver<false, true>(M, N, K, A, lda, Bp, K * 16, 16, C, ldc, accumulate, bias);
}

void gemm_rowmajor_b(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
                     int64_t ldb, float* C, int64_t ldc, bool accumulate, const float* bias) {
  gemm_driver<false, false>(M, N, K, A, lda, B, 16, ldb, C, ldc, accumulate, bias);
}

namespace {
// r[0..15] (16 rows of 16) transposed in place: r[j][i] = old r[i][j]. Three rounds of
// shuffles: pairs of rows interleaved, then quads within 128-bit lanes, then the lanes.
__attribute__((target("avx512f"))) inline void transpose16(__m512 r[16]) {
  __m512 t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int q = 0; q < 4; ++q) {  // u[4q + c]: rows 4q..4q+3, element 4L + c of each lane L
    u[4 * q + 0] = _mm512_shuffle_ps(t[4 * q], t[4 * q + 2], 0x44);
    u[4 * q + 1] = _mm512_shuffle_ps(t[4 * q], t[4 * q + 2], 0xEE);
    u[4 * q + 2] = _mm512_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0x44);
    u[4 * q + 3] = _mm512_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0xEE);
  }
  for (int c = 0; c < 4; ++c) {
    const __m512 v = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88), w = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xDD);
    const __m512 x = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88), y = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xDD);
    r[c] = _mm512_shuffle_f32x4(v, x, 0x88);
    r[8 + c] = _mm512_shuffle_f32x4(v, x, 0xDD);
    r[4 + c] = _mm512_shuffle_f32x4(w, y, 0x88);
    r[12 + c] = _mm512_shuffle_f32x4(w, y, 0xDD);
  }
}
}  // namespace

__attribute__((target("avx512f"))) void transpose_block_avx512(int64_t r0, int64_t r1, int64_t c0, int64_t c1,
                                                               const float* src, int64_t lds, float* dst,
                                                               int64_t ldd) {
  __m512 v[16];
  for (int64_t r = r0; r < r1; r += 16) {
    const int rows = int(std::min<int64_t>(16, r1 - r));
    const __mmask16 rmask = __mmask16((1u << rows) - 1u);
    for (int64_t c = c0; c < c1; c += 16) {
      const int cols = int(std::min<int64_t>(16, c1 - c));
      const __mmask16 cmask = __mmask16((1u << cols) - 1u);
      for (int i = 0; i < 16; ++i)
        v[i] = i < rows ? _mm512_maskz_loadu_ps(cmask, src + (r + i) * lds + c) : _mm512_setzero_ps();
      transpose16(v);
      for (int j = 0; j < cols; ++j) _mm512_mask_storeu_ps(dst + (c + j) * ldd + r, rmask, v[j]);
    }
  }
}

namespace {
// Rows [0, MR) of C, columns [n0, n0 + rows): the products of k in [k0, k1) (one summation
// block) of A's rows with B's stored rows n0.., 16 x 16 blocks of B transposed in registers so
// that each lane holds one column of C; then C = the sums, or C += them with add.
template <int MR>
__attribute__((target("avx512f"))) void bt_block(int64_t n0, int rows, int64_t k0, int64_t k1, const float* A,
                                                 int64_t lda, const float* B, int64_t ldb, float* C,
                                                 int64_t ldc, bool add) {
  __m512 acc[MR];
  for (int m = 0; m < MR; ++m) acc[m] = _mm512_setzero_ps();
  for (int64_t kb = k0; kb < k1; kb += 16) {
    const int kk = int(std::min<int64_t>(16, k1 - kb));
    const __mmask16 kmask = __mmask16((1u << kk) - 1u);
    __m512 r[16];
    for (int i = 0; i < 16; ++i) {
      r[i] = i < rows ? _mm512_maskz_loadu_ps(kmask, B + (n0 + i) * ldb + kb) : _mm512_setzero_ps();
    }
    transpose16(r);  // r[j]: element kb + j of the 16 rows
    for (int j = 0; j < kk; ++j) {
      for (int m = 0; m < MR; ++m) acc[m] = _mm512_fmadd_ps(_mm512_set1_ps(A[m * lda + kb + j]), r[j], acc[m]);
    }
  }
  const __mmask16 nmask = __mmask16((1u << rows) - 1u);
  for (int m = 0; m < MR; ++m) store_sums(C + m * ldc + n0, acc[m], nmask, add);
}

using BtFn = void (*)(int64_t, int, int64_t, int64_t, const float*, int64_t, const float*, int64_t, float*,
                      int64_t, bool);
constexpr BtFn kBtBlocks[8] = {&bt_block<1>, &bt_block<2>, &bt_block<3>, &bt_block<4>,
                               &bt_block<5>, &bt_block<6>, &bt_block<7>, &bt_block<8>};
}  // namespace

void gemm_bt_rows(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
                  float* C, int64_t ldc, bool accumulate) {
  // 16 columns of C at a time; for each summation block of k (micro_kernel's), every 8-row
  // block of A in turn, while the 16 rows of B's block are in L1.
  for (int64_t n0 = 0; n0 < N; n0 += 16) {
    const int rows = int(std::min<int64_t>(16, N - n0));
    for (int64_t k0 = 0; k0 < K || k0 == 0; k0 += kSumBlock) {
      const int64_t k1 = std::min(K, k0 + kSumBlock);
      for (int64_t m0 = 0; m0 < M; m0 += 8) {
        const int mr = int(std::min<int64_t>(8, M - m0));
        kBtBlocks[mr - 1](n0, rows, k0, k1, A + m0 * lda, lda, B, ldb, C + m0 * ldc, ldc, accumulate || k0 > 0);
      }
    }
  }
}

void gemm_at_packed_b(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                      const float* Bp, float* C, int64_t ldc, bool accumulate, const float* bias,
                      GemmPrecision prec) {
  if (prec == GemmPrecision::kBfloat16) {
    gemm_bf16_driver<true>(M, N, K, A, lda, reinterpret_cast<const uint16_t*>(Bp), C, ldc, accumulate, bias);
    return;
  }
  gemm_driver<true, true>(M, N, K, A, lda, Bp, K * 16, 16, C, ldc, accumulate, bias);
}

namespace {
// Blocks of kPackPanels panels (256 columns), each walked over all rows: per row, one 1 KB run
// of the source, one 64-byte line into each of the block's panels (written sequentially), and
// the block's column sums (2 KB of doubles) stay in L1. (Walking every panel per row instead,
// the 10000-column output layer's sums, 80 KB, spilled to L2 on every row and the 625 panels
// were 625 write streams: the pack with sums took longer than the GEMM.) The sums still add
// the rows in order, so the result is the same.
constexpr int64_t kPackPanels = 16;

__attribute__((target("avx512f"))) void pack_rows_avx512(int64_t K, int64_t N, const float* B,
                                                         int64_t ldb, float* out, double* sums) {
  const int64_t panels = (N + 15) / 16;
  const int64_t full = N / 16;
  const __mmask16 tail = __mmask16((1u << (N - full * 16)) - 1u);
  for (int64_t q0 = 0; q0 < panels; q0 += kPackPanels) {
    const int64_t q1 = std::min(panels, q0 + kPackPanels);
    for (int64_t k = 0; k < K; ++k) {
      const float* src = B + k * ldb;
      float* dst = out + k * 16;
      for (int64_t p = q0; p < q1; ++p) {
        const __m512 v = p < full ? _mm512_loadu_ps(src + p * 16)
                                  : _mm512_maskz_loadu_ps(tail, src + p * 16);
        _mm512_storeu_ps(dst + p * K * 16, v);
        if (sums) {
          double* sp = sums + p * 16;
          const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
          const __m512d hi = _mm512_cvtps_pd(
              _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
          _mm512_storeu_pd(sp, _mm512_add_pd(_mm512_loadu_pd(sp), lo));
          _mm512_storeu_pd(sp + 8, _mm512_add_pd(_mm512_loadu_pd(sp + 8), hi));
        }
      }
    }
  }
}
}  // namespace

#endif

void pack_b_rows(int64_t K, int64_t N, const float* B, int64_t ldb, float* out, double* colsum,
                 GemmPrecision prec) {
  const int64_t panels = (N + 15) / 16;
  if (prec == GemmPrecision::kBfloat16) {  // (float32 panels, the sums from them; then converted)
    pack_b_rows(K, N, B, ldb, out, colsum, GemmPrecision::kFloat32);
    for (int64_t p = 0; p < panels; ++p) panel_to_bf16(out + p * K * 16, K);
    return;
  }
#if defined(PYLSTM_HAVE_AVX512_KERNEL)
  if (cpu_has_avx512()) {
    pack_rows_avx512(K, N, B, ldb, out, colsum);
    return;
  }
#endif
  for (int64_t k = 0; k < K; ++k) {
    const float* src = B + k * ldb;
    for (int64_t p = 0; p < panels; ++p) {
      float* dst = out + p * K * 16 + k * 16;
      const int64_t w = std::min<int64_t>(16, N - p * 16);
      for (int64_t c = 0; c < 16; ++c) {
        const float v = c < w ? src[p * 16 + c] : 0.0f;
        dst[c] = v;
        if (colsum) colsum[p * 16 + c] += v;
      }
    }
  }
}

#if !defined(PYLSTM_HAVE_AVX512_KERNEL)

void gemm_packed_b(int64_t, int64_t, int64_t, const float*, int64_t, const float*, float*,
                   int64_t, bool, const float*, GemmPrecision) {}
void gemm_at_packed_b(int64_t, int64_t, int64_t, const float*, int64_t, const float*, float*,
                      int64_t, bool, const float*, GemmPrecision) {}
void gemm_rowmajor_b(int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t, float*,
                     int64_t, bool, const float*) {}
void gemm_bt_rows(int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t, bool) {}
void transpose_block_avx512(int64_t, int64_t, int64_t, int64_t, const float*, int64_t, float*, int64_t) {}

#endif

}  // namespace pylstm
