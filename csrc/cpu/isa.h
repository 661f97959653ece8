// Run-time choice of an instruction set for plain loops: a copy compiled for AVX-512 beside the
// baseline one, taken where the CPU has it (x86-64 with GCC or Clang; elsewhere the "AVX-512"
// copy is a second baseline copy and is never chosen).
#pragma once

namespace pylstm {

#if defined(__x86_64__) && defined(__GNUC__)
#define PYLSTM_TARGET_AVX512F __attribute__((target("avx512f")))
inline bool cpu_has_avx512f() {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
}
#else
#define PYLSTM_TARGET_AVX512F
inline bool cpu_has_avx512f() { return false; }
#endif

}  // namespace pylstm
