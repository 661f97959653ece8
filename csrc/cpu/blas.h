// Row-major GEMM through the scipy-openblas32 CBLAS (symbols prefixed scipy_), one overload per
// dtype, so templated kernels can call gemm<T>. Used by cpu/sequence.cpp and the native benchmark.
#pragma once

#include <cblas.h>

namespace pylstm {

// C (M x N, ldc) = alpha * op(A) (M x K) * op(B) (K x N) + beta * C; row-major, 32-bit BLAS ints.
inline void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
                 int lda, const float* B, int ldb, float beta, float* C, int ldc) {
  scipy_cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                    trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, C,
                    ldc);
}

inline void gemm(bool trans_a, bool trans_b, int M, int N, int K, double alpha, const double* A,
                 int lda, const double* B, int ldb, double beta, double* C, int ldc) {
  scipy_cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                    trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, C,
                    ldc);
}

}  // namespace pylstm
