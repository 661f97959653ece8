// The one way every GEMM kernel writes its float32 sums to C (cpu/packed_gemm.cpp,
// cpu/packed_gemm_bf16.cpp): one row of 16 columns, masked at the matrix's edge, stored, or
// added to what C holds (accumulating calls, and every summation block after the first: the
// order of rounding that keeps the kernels' results bitwise alike). x86-64 with GCC only.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace pylstm {

__attribute__((target("avx512f"))) inline void store_sums(float* dst, __m512 sums, __mmask16 cols, bool add) {
  if (add) sums = _mm512_add_ps(sums, _mm512_maskz_loadu_ps(cols, dst));
  _mm512_mask_storeu_ps(dst, cols, sums);
}

}  // namespace pylstm
