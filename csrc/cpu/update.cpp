// The elementwise passes of a training step's update on the CPU (declared in cpu/api.h; called
// by bind/cpu.cpp): the weighted sum of the ranks' gradients that data-parallel training forms
// in shared memory, and SGD's p -= lr * g, each one pass over memory with no temporary array.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/api.h"
#include "cpu/isa.h"
#include "cpu/threads.h"

namespace pylstm {

namespace {
constexpr int64_t kChunk = 1 << 15;  // elements per task (and per partial sum of squares)
constexpr int kLanes = 8;            // independent sums of squares within a chunk

// One chunk [begin, end) of the weighted sum; returns its sum of squares (kLanes lanes, added
// pairwise). always_inline: compiled once per instruction set below.
template <class T>
__attribute__((always_inline)) inline double sum_chunk(T* out, const std::vector<const T*>& in,
                                                       const std::vector<double>& w, int64_t begin,
                                                       int64_t end) {
  constexpr int64_t kBlock = 512;  // the running sums of one block stay in L1
  double acc[kBlock];
  double lane[kLanes] = {};
  for (int64_t b0 = begin; b0 < end; b0 += kBlock) {
    const int64_t m = std::min(kBlock, end - b0);
    {
      const T* src = in[0] + b0;
      const double wk = w[0];
      for (int64_t j = 0; j < m; ++j) acc[j] = wk * double(src[j]);
    }
    for (size_t k = 1; k < in.size(); ++k) {  // the ranks in order: the same sum on every rank
      const T* src = in[k] + b0;
      const double wk = w[k];
      for (int64_t j = 0; j < m; ++j) acc[j] += wk * double(src[j]);
    }
    T* dst = out + b0;  // (out may be one of the inputs: each element is read above, then written)
    int64_t j = 0;
    for (; j + kLanes <= m; j += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        const T v = T(acc[j + l]);  // rounded once
        dst[j + l] = v;
        lane[l] += double(v) * double(v);
      }
    }
    for (int l = 0; j < m; ++j, ++l) {
      const T v = T(acc[j]);
      dst[j] = v;
      lane[l] += double(v) * double(v);
    }
  }
  for (int s = kLanes / 2; s >= 1; s /= 2)
    for (int l = 0; l < s; ++l) lane[l] += lane[l + s];
  return lane[0];
}

// The conversions to double and back are the cost (memory alone allows ~3x more on SSE2):
// an AVX-512 copy where the CPU has it (here and for SGD below). Both give the same bits (no
// contraction in this file).
template <class T>
PYLSTM_TARGET_AVX512F double sum_chunk_avx512(T* out, const std::vector<const T*>& in,
                                                          const std::vector<double>& w, int64_t begin,
                                                          int64_t end) {
  return sum_chunk<T>(out, in, w, begin, end);
}
template <class T>
double sum_chunk_base(T* out, const std::vector<const T*>& in, const std::vector<double>& w, int64_t begin,
                      int64_t end) {
  return sum_chunk<T>(out, in, w, begin, end);
}

}  // namespace

template <class T>
double weighted_sum_cpu(Span<T> out, const std::vector<const T*>& in, const std::vector<double>& w) {
  const bool avx512 = cpu_has_avx512f();
  const int64_t n = out.size, nchunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(nchunks, 0.0);
  parallel_chunks(nchunks, 1, 2, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c) {
      const int64_t begin = c * kChunk, end = std::min(n, begin + kChunk);
      partial[c] = avx512 ? sum_chunk_avx512<T>(out.data, in, w, begin, end)
                          : sum_chunk_base<T>(out.data, in, w, begin, end);
    }
  });
  double total = 0.0;
  for (double p : partial) total += p;  // in chunk order: independent of the thread count
  return total;
}

template <class T>
__attribute__((always_inline)) inline void sgd_chunk(T* p, const T* g, T rate, double scale, int64_t lo,
                                                     int64_t hi) {
  if (scale == 1.0) {
#pragma omp simd
    for (int64_t i = lo; i < hi; ++i) p[i] = p[i] - rate * g[i];  // (built -ffp-contract=off)
  } else {
#pragma omp simd
    for (int64_t i = lo; i < hi; ++i) p[i] = p[i] - rate * T(double(g[i]) * scale);
  }
}
template <class T>
PYLSTM_TARGET_AVX512F void sgd_chunk_avx512(T* p, const T* g, T rate, double scale, int64_t lo,
                                                        int64_t hi) {
  sgd_chunk<T>(p, g, rate, scale, lo, hi);
}
template <class T>
void sgd_chunk_base(T* p, const T* g, T rate, double scale, int64_t lo, int64_t hi) {
  sgd_chunk<T>(p, g, rate, scale, lo, hi);
}

template <class T>
void sgd_update_cpu(const std::vector<Span<T>>& params, const std::vector<Span<T>>& grads, double lr,
                    double scale) {
  // numpy's p -= lr * g with lr a Python float: lr rounded to T, the product rounded to T, then
  // the difference (no fused multiply-add: the same bits as that expression). With a scale, g
  // is first multiplied by it as clip_grads scales (in double, rounded once), not stored.
  const bool avx512 = cpu_has_avx512f();
  const T rate = T(lr);
  for (size_t a = 0; a < params.size(); ++a) {
    T* p = params[a].data;
    const T* g = grads[a].data;
    parallel_chunks(params[a].size, kChunk, 2 * kChunk, [&](int64_t lo, int64_t hi) {
      if (avx512) sgd_chunk_avx512<T>(p, g, rate, scale, lo, hi);
      else sgd_chunk_base<T>(p, g, rate, scale, lo, hi);
    });
  }
}

template double weighted_sum_cpu<float>(Span<float>, const std::vector<const float*>&, const std::vector<double>&);
template double weighted_sum_cpu<double>(Span<double>, const std::vector<const double*>&, const std::vector<double>&);
template void sgd_update_cpu<float>(const std::vector<Span<float>>&, const std::vector<Span<float>>&, double, double);
template void sgd_update_cpu<double>(const std::vector<Span<double>>&, const std::vector<Span<double>>&, double, double);

}  // namespace pylstm
