// A GEMM specialized for the LSTM's per-step recurrent products (called by lstm_cpu.cpp): few
// rows (M = the batch), a weight matrix B packed once per sequence into 16-column panels, and
// an AVX-512 register-blocked micro-kernel. It exists because the BLAS call per step re-packs
// the weights every step and, on machines that pin OpenBLAS to AVX2, runs at half the FMA
// width; the benchmark (benchmarks/RESULTS.md) shows the gain. float only; callers fall back
// to BLAS for double or when the CPU has no AVX-512.
#pragma once

#include <cstdint>

namespace pylstm {

// True when the CPU supports AVX-512F and the kernel is enabled (see set_small_m_kernel).
bool small_m_kernel_enabled();
// Test hook: turn the kernel off (BLAS path) or back on. Returns the previous setting.
bool set_small_m_kernel(bool on);

// Floats needed by pack_b for a K x N matrix: K * 16 * ceil(N / 16).
inline int64_t packed_b_size(int64_t K, int64_t N) { return K * 16 * ((N + 15) / 16); }

// Packs the K x N matrix B into panels: panel p holds columns [16p, 16p+16), row k at
// out[p*K*16 + k*16 + c]; columns past N are zero. col(n) gives the address of column n's
// first element and row_stride the distance between consecutive k in that column, so any
// strided or transposed source (and the gate-sliced weights of lstm_cpu.cpp) can be packed.
template <class ColPtr>
void pack_b(int64_t K, int64_t N, ColPtr col, int64_t row_stride, float* out) {
  const int64_t panels = (N + 15) / 16;
  for (int64_t p = 0; p < panels; ++p) {
    float* dst = out + p * K * 16;
    for (int c = 0; c < 16; ++c) {
      const int64_t n = p * 16 + c;
      if (n < N) {
        const float* src = col(n);
        for (int64_t k = 0; k < K; ++k) dst[k * 16 + c] = src[k * row_stride];
      } else {
        for (int64_t k = 0; k < K; ++k) dst[k * 16 + c] = 0.0f;
      }
    }
  }
}

// C (M x N, ldc) = A (M x K, lda) @ B, with B packed by pack_b. C is overwritten.
void gemm_packed_b(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* Bp,
                   float* C, int64_t ldc);

}  // namespace pylstm
