// The GPU sequence kernels' API (lstm_cuda.cu), the CUDA counterpart of pylstm.h. Pointers are
// device memory in the CUDA build and host memory in the emulation build (cuda_emu.h); arguments
// are as for lstm_forward_cpu / lstm_backward_cpu in pylstm.h, plus the context.
#pragma once

#include <cstdint>

#include "cuda_emu.h"
#include "pylstm.h"

namespace pylstm {

// Where a call runs: the caller's stream and the cuBLAS handle cached for its device (unused in
// the emulation build).
struct GpuContext {
  cudaStream_t stream = nullptr;
  void* blas_handle = nullptr;
};

// Scratch sizes: lstm_forward_workspace_size / lstm_backward_workspace_size of pylstm.h.

template <class T>
void lstm_forward_cuda(const GpuContext& ctx, const LstmShape& s, const T* xs, const T* h0,
                       const T* c0, const T* Wx, const T* Wh, const T* b, T* hs, T* hT, T* cT,
                       T* gates, T* cs, T* work);

template <class T>
void lstm_backward_cuda(const GpuContext& ctx, const LstmShape& s, const T* xs, const T* h0,
                        const T* c0, const T* Wx, const T* Wh, const T* hs, const T* gates,
                        const T* cs, const T* dhs, const T* dhT, const T* dcT, T* dxs, T* dh0,
                        T* dc0, T* dW, T* db, T* work);

// Clipping (lstm_cuda.cu): one table entry per chunk of at most kClipChunk elements of one array.
constexpr int64_t kClipChunk = 1 << 16;
constexpr unsigned kClipThreads = 256;
template <class T>
struct ClipChunk {
  T* data;
  int64_t size;
};

// Global norm of every element of every chunk, accumulated in double in a fixed order:
//   table     (nchunks,) in, device memory
//   partials  (nchunks * kClipThreads,) doubles, scratch
//   out       (3,) doubles out: [norm, rate applied (1 when none), 1 if the norm is finite else 0]
// When max_norm > 0 and the norm is finite and above max_norm, every element is scaled by
// max_norm / (norm + 1e-6) in place; max_norm <= 0 only measures. Never syncs the host.
template <class T>
void clip_grads_cuda(const GpuContext& ctx, const ClipChunk<T>* table, int64_t nchunks,
                     double max_norm, double* partials, double* out);

#if defined(__CUDACC__)
// Row-major GEMM through cuBLAS on ctx's stream (defined with the CUDA module's cuBLAS glue).
void gpu_gemm(const GpuContext& ctx, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
              float alpha, const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
              float* C, int64_t ldc);
void gpu_gemm(const GpuContext& ctx, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
              double alpha, const double* A, int64_t lda, const double* B, int64_t ldb,
              double beta, double* C, int64_t ldc);
#endif

}  // namespace pylstm
