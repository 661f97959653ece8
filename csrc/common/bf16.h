// bfloat16 rounding, one rule for every backend: the CPU kernels round GEMM operands as they pack
// them (cpu/packed_gemm_bf16.cpp), the CUDA driver as it converts them for cuBLAS
// (cuda/kernels.cu), and the reference states the same rounding (reference.bf16_round_ref).
#pragma once

#include <cstdint>
#include <cstring>

#include "common/hd.h"

namespace pylstm {

// f rounded to bfloat16, to nearest even (a NaN stays a quiet NaN of the same sign).
PYLSTM_HD uint16_t bf16_round(float f) {
#if defined(__CUDA_ARCH__)
  uint32_t u = __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
#endif
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return uint16_t((u >> 16) | 0x40u);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

// The float32 value of a bfloat16.
PYLSTM_HD float bf16_to_float(uint16_t h) {
  const uint32_t u = uint32_t(h) << 16;
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

}  // namespace pylstm
