// The AVX-512 micro-kernel and driver of gemm_small_m.h. Register blocking: up to 8 rows of A
// times 3 panels (48 columns) of B = 24 zmm accumulators; per k, 3 panel loads, 8 broadcasts
// and 24 FMAs, so the two 512-bit FMA pipes stay busy. The driver walks panel groups outside
// and row blocks inside, so each 48-column slab of B (K x 48 floats) is read from memory once
// per call and then hit in L1/L2 by every row block.
#include "gemm_small_m.h"

#include <algorithm>
#include <atomic>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
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

bool small_m_kernel_enabled() { return g_enabled.load() && cpu_has_avx512(); }

bool set_small_m_kernel(bool on) { return g_enabled.exchange(on); }

#if defined(PYLSTM_HAVE_AVX512_KERNEL)

namespace {

constexpr int kMR = 8;  // rows per micro-tile
constexpr int kNP = 3;  // 16-column panels per micro-tile

// acc[r][p] += A[r][k] * Bp[p][k] over k; then C = acc (masked on the last panel).
template <int MR, int NP>
__attribute__((target("avx512f"))) void micro_kernel(int64_t K, const float* A, int64_t lda,
                                                     const float* Bp, int64_t panel_stride,
                                                     float* C, int64_t ldc, __mmask16 last_mask) {
  __m512 acc[MR][NP];
  for (int r = 0; r < MR; ++r)
    for (int p = 0; p < NP; ++p) acc[r][p] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m512 b[NP];
    for (int p = 0; p < NP; ++p) b[p] = _mm512_loadu_ps(Bp + p * panel_stride + k * 16);
    for (int r = 0; r < MR; ++r) {
      const __m512 a = _mm512_set1_ps(A[r * lda + k]);
      for (int p = 0; p < NP; ++p) acc[r][p] = _mm512_fmadd_ps(a, b[p], acc[r][p]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int p = 0; p < NP; ++p) {
      float* dst = C + r * ldc + p * 16;
      if (p == NP - 1) _mm512_mask_storeu_ps(dst, last_mask, acc[r][p]);
      else _mm512_storeu_ps(dst, acc[r][p]);
    }
  }
}

using MicroFn = void (*)(int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t,
                         __mmask16);

template <int MR>
MicroFn pick_np(int np) {
  switch (np) {
    case 1: return &micro_kernel<MR, 1>;
    case 2: return &micro_kernel<MR, 2>;
    default: return &micro_kernel<MR, 3>;
  }
}

MicroFn pick(int mr, int np) {
  switch (mr) {
    case 1: return pick_np<1>(np);
    case 2: return pick_np<2>(np);
    case 3: return pick_np<3>(np);
    case 4: return pick_np<4>(np);
    case 5: return pick_np<5>(np);
    case 6: return pick_np<6>(np);
    case 7: return pick_np<7>(np);
    default: return pick_np<8>(np);
  }
}

}  // namespace

void gemm_packed_b(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* Bp,
                   float* C, int64_t ldc) {
  const int64_t panels = (N + 15) / 16;
  const int64_t panel_stride = K * 16;
  for (int64_t p0 = 0; p0 < panels; p0 += kNP) {
    const int np = int(std::min<int64_t>(kNP, panels - p0));
    const int64_t last_cols = std::min<int64_t>(16, N - (p0 + np - 1) * 16);
    const __mmask16 last_mask = __mmask16((1u << last_cols) - 1u);
    for (int64_t r0 = 0; r0 < M; r0 += kMR) {
      const int mr = int(std::min<int64_t>(kMR, M - r0));
      pick(mr, np)(K, A + r0 * lda, lda, Bp + p0 * panel_stride, panel_stride,
                   C + r0 * ldc + p0 * 16, ldc, last_mask);
    }
  }
}

#else

void gemm_packed_b(int64_t, int64_t, int64_t, const float*, int64_t, const float*, float*,
                   int64_t) {}

#endif

}  // namespace pylstm
