// The activation functions of every cell (cells/*.h), written once for the CPU loops and the
// CUDA kernels: under nvcc they are __host__ __device__, otherwise plain inline, and they are
// written so that a CPU loop over them auto-vectorizes (no libm calls, no branches that depend
// on data other than selects).
#pragma once

#include <cstdint>
#include <cstring>

#include "common/hd.h"

namespace pylstm {

// --- exp / expm1 without libm --------------------------------------------------------------
// exp(x) = 2^k * (1 + p), with k = round(x / ln 2), r = x - k ln 2 (Cody-Waite, two-part ln 2)
// and p = expm1(r) from its Taylor series on |r| <= ln(2)/2. Truncation error of the series:
// float (degree 7) < 2e-8 relative, double (degree 14) < 3e-17 relative. Measured against
// numpy in tests/test_cell_math.py: sigmoid/tanh within 4 ulp in both precisions.
// The rounding uses the 1.5*2^m "magic number" trick, so k is read from the bits of a float
// and no float->int conversion of a possible NaN happens (NaN inputs give NaN outputs).
template <class T>
struct ExpTraits;

template <>
struct ExpTraits<float> {
  using Bits = int32_t;
  using UBits = uint32_t;
  static constexpr float kLog2e = 1.44269504088896341f;
  static constexpr float kLn2Hi = 0.693145751953125f;       // 12 significant bits: k*kLn2Hi exact
  static constexpr float kLn2Lo = 1.42860682030941723212e-6f;
  static constexpr float kMagic = 12582912.0f;              // 1.5 * 2^23
  static constexpr float kMaxArg = 87.0f;                   // 2^k stays a normal float
  static constexpr int kMantBits = 23;
  static constexpr Bits kBias = 127;
  // The clamp for tanh's 2|x|: tanh(x) rounds to 1 in float well before |x| = 20.
  static constexpr float kTanhMaxArg = 40.0f;
};

template <>
struct ExpTraits<double> {
  using Bits = int64_t;
  using UBits = uint64_t;
  static constexpr double kLog2e = 1.44269504088896340736;
  static constexpr double kLn2Hi = 6.93147180369123816490e-01;  // upper bits of ln 2
  static constexpr double kLn2Lo = 1.90821492927058770002e-10;
  static constexpr double kMagic = 6755399441055744.0;            // 1.5 * 2^52
  static constexpr double kMaxArg = 708.0;
  static constexpr int kMantBits = 52;
  static constexpr Bits kBias = 1023;
  static constexpr double kTanhMaxArg = 80.0;
};

template <class T>
PYLSTM_HD typename ExpTraits<T>::Bits bits_of(T x) {
  typename ExpTraits<T>::Bits b;
  memcpy(&b, &x, sizeof(T));
  return b;
}

template <class T>
PYLSTM_HD T from_bits(typename ExpTraits<T>::Bits b) {
  T x;
  memcpy(&x, &b, sizeof(T));
  return x;
}

// expm1(r) for |r| <= ln(2)/2, by Horner on the Taylor series.
PYLSTM_HD float expm1_reduced(float r) {
  float q = 1.0f / 5040.0f;
  q = q * r + 1.0f / 720.0f;
  q = q * r + 1.0f / 120.0f;
  q = q * r + 1.0f / 24.0f;
  q = q * r + 1.0f / 6.0f;
  q = q * r + 0.5f;
  q = q * r + 1.0f;
  return q * r;
}

PYLSTM_HD double expm1_reduced(double r) {
  double q = 1.0 / 87178291200.0;  // 1/14!
  q = q * r + 1.0 / 6227020800.0;
  q = q * r + 1.0 / 479001600.0;
  q = q * r + 1.0 / 39916800.0;
  q = q * r + 1.0 / 3628800.0;
  q = q * r + 1.0 / 362880.0;
  q = q * r + 1.0 / 40320.0;
  q = q * r + 1.0 / 5040.0;
  q = q * r + 1.0 / 720.0;
  q = q * r + 1.0 / 120.0;
  q = q * r + 1.0 / 24.0;
  q = q * r + 1.0 / 6.0;
  q = q * r + 0.5;
  q = q * r + 1.0;
  return q * r;
}

// Splits exp(x) = scale * (1 + p); x must already be clamped to [-kMaxArg, kMaxArg] (or NaN).
template <class T>
PYLSTM_HD void exp_split(T x, T& scale, T& p) {
  using Tr = ExpTraits<T>;
  const T t = x * Tr::kLog2e + Tr::kMagic;
  const T k = t - Tr::kMagic;
  const T r = (x - k * Tr::kLn2Hi) - k * Tr::kLn2Lo;
  const typename Tr::Bits ki = bits_of(t) - bits_of(Tr::kMagic);
  // Unsigned shift: defined for every bit pattern (a NaN x makes ki meaningless, p NaN anyway).
  scale = from_bits<T>(static_cast<typename Tr::Bits>(static_cast<typename Tr::UBits>(ki + Tr::kBias)
                                                      << Tr::kMantBits));
  p = expm1_reduced(r);
}

template <class T>
PYLSTM_HD T clamp_arg(T x, T lo, T hi) {
  // Written with comparisons so that NaN passes through unchanged.
  x = x < lo ? lo : x;
  return x > hi ? hi : x;
}

// Logistic sigmoid 1 / (1 + exp(-x)): no cancellation anywhere, so a few ulp everywhere. Below
// -kMaxArg, where the true value is subnormal, it is exactly 0 (-inf included), so a saturated
// gate passes no gradient and 0 * inf gives NaN as in the reference.
template <class T>
PYLSTM_HD T sigmoid(T x) {
  T s, p;
  exp_split<T>(clamp_arg<T>(-x, -ExpTraits<T>::kMaxArg, ExpTraits<T>::kMaxArg), s, p);
  const T y = T(1) / (T(1) + (s + s * p));
  return x < -ExpTraits<T>::kMaxArg ? T(0) : y;
}

// tanh(x) = sign(x) * e / (e + 2) with e = expm1(2|x|) = (2^k - 1) + 2^k * p: accurate near 0
// (where 1 - 2/(exp(2x)+1) would cancel) and exactly +-1 for large |x|.
template <class T>
PYLSTM_HD T tanh_fast(T x) {
  const T ax = x < T(0) ? -x : x;
  const T y = clamp_arg<T>(T(2) * ax, T(0), ExpTraits<T>::kTanhMaxArg);
  T s, p;
  exp_split<T>(y, s, p);
  const T e = (s - T(1)) + s * p;
  const T t = e / (e + T(2));
  return x < T(0) ? -t : t;
}

}  // namespace pylstm
