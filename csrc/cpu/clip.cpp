// Global-norm gradient clipping on the CPU (declared in cpu/api.h; called by bind/cpu.cpp).
// The norm is a double-precision sum over fixed-size chunks whose partial sums are added in
// order, so it is bit-identical for any thread count; scaling is a plain in-place multiply.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/api.h"
#include "cpu/isa.h"
#include "cpu/threads.h"

namespace pylstm {

namespace {
constexpr int64_t kChunk = 1 << 15;  // elements per partial sum
constexpr int kLanes = 8;            // independent sums within a chunk

// The sum of squares of x[0, n) in double. kLanes independent sums: one running sum is bound by
// the add latency (about 1 ns an element), these by memory bandwidth. Fixed lanes and a fixed
// final order: the same result at any thread count, and with either instruction set below (the
// file is built without contraction into FMAs).
template <class T>
__attribute__((always_inline)) inline double sumsq(const T* x, int64_t n) {
  double lane[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const double v = double(x[i + j]);
      lane[j] += v * v;
    }
  }
  for (int j = 0; i < n; ++i, ++j) {
    const double v = double(x[i]);
    lane[j] += v * v;
  }
  for (int w = kLanes / 2; w >= 1; w /= 2)  // pairwise: ((l0 + l4) + (l2 + l6)) + ...
    for (int j = 0; j < w; ++j) lane[j] += lane[j + w];
  return lane[0];
}
// (the conversions to double are most of the work on SSE2: an AVX-512 copy where there is one)
template <class T>
PYLSTM_TARGET_AVX512F double sumsq_avx512(const T* x, int64_t n) { return sumsq<T>(x, n); }
template <class T>
double sumsq_base(const T* x, int64_t n) { return sumsq<T>(x, n); }

}  // namespace

template <class T>
double global_norm_cpu(const std::vector<Span<T>>& arrays) {
  const bool avx512 = cpu_has_avx512f();
  // Flatten the list into (array, chunk) tasks with one partial sum each.
  std::vector<int64_t> first;  // index of each array's first task
  int64_t ntasks = 0;
  for (const auto& a : arrays) {
    first.push_back(ntasks);
    ntasks += (a.size + kChunk - 1) / kChunk;
  }
  std::vector<double> partial(ntasks, 0.0);
  std::vector<int> owner(ntasks);
  for (size_t k = 0; k < arrays.size(); ++k) {
    const int64_t nc = (arrays[k].size + kChunk - 1) / kChunk;
    for (int64_t c = 0; c < nc; ++c) owner[first[k] + c] = int(k);
  }
  parallel_chunks(ntasks, 1, 2, [&](int64_t lo, int64_t hi) {
    for (int64_t task = lo; task < hi; ++task) {
      const auto& a = arrays[owner[task]];
      const int64_t begin = (task - first[owner[task]]) * kChunk;
      const int64_t end = std::min(a.size, begin + kChunk);
      partial[task] = avx512 ? sumsq_avx512<T>(a.data + begin, end - begin)
                             : sumsq_base<T>(a.data + begin, end - begin);
    }
  });
  double total = 0.0;
  for (double p : partial) total += p;
  return std::sqrt(total);
}

template <class T>
void scale_arrays_cpu(const std::vector<Span<T>>& arrays, double rate) {
  // The product in double, rounded once (as the CUDA kernel and the reference do): a rate
  // below float32's range (1e-9 / 3e38) would round to 0 and zero the gradients.
  for (const auto& a : arrays) {
    parallel_chunks(a.size, kChunk, 2 * kChunk, [&](int64_t lo, int64_t hi) {
#pragma omp simd
      for (int64_t i = lo; i < hi; ++i) a.data[i] = T(double(a.data[i]) * rate);
    });
  }
}

template <class T>
void clip_value_cpu(const std::vector<Span<T>>& arrays, double limit) {
  // The bound rounded to T once: a limit past float32's range clamps nothing, as it should.
  // Comparisons are false for NaN, so a NaN stays NaN (numpy.clip's rule); +-inf become +-limit.
  const T hi = T(limit), lo = -hi;
  for (const auto& a : arrays) {
    parallel_chunks(a.size, kChunk, 2 * kChunk, [&](int64_t b, int64_t e) {
#pragma omp simd
      for (int64_t i = b; i < e; ++i) {
        const T v = a.data[i];
        a.data[i] = v > hi ? hi : v < lo ? lo : v;
      }
    });
  }
}

template double global_norm_cpu<float>(const std::vector<Span<float>>&);
template double global_norm_cpu<double>(const std::vector<Span<double>>&);
template void scale_arrays_cpu<float>(const std::vector<Span<float>>&, double);
template void scale_arrays_cpu<double>(const std::vector<Span<double>>&, double);
template void clip_value_cpu<float>(const std::vector<Span<float>>&, double);
template void clip_value_cpu<double>(const std::vector<Span<double>>&, double);

}  // namespace pylstm
