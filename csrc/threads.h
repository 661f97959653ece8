// A deterministic parallel-for over [0, n) in fixed chunks on the OpenMP team of size
// get_num_threads(); runs serially when the work is too small to pay for waking threads.
// Used by the pointwise passes in lstm_cpu.cpp and by clip_cpu.cpp.
#pragma once

#include <cstdint>

#include "pylstm.h"

namespace pylstm {

// Calls body(begin, end) for consecutive chunks covering [0, n). Which thread runs which chunk
// may vary; the chunk boundaries do not, so per-chunk results are reproducible.
template <class F>
void parallel_chunks(int64_t n, int64_t chunk, int64_t min_parallel, F&& body) {
  const int64_t nchunks = (n + chunk - 1) / chunk;
  const int nt = get_num_threads();
  if (nt <= 1 || nchunks <= 1 || n < min_parallel) {
    for (int64_t c = 0; c < nchunks; ++c) {
      const int64_t lo = c * chunk;
      body(lo, lo + chunk < n ? lo + chunk : n);
    }
    return;
  }
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t c = 0; c < nchunks; ++c) {
    const int64_t lo = c * chunk;
    body(lo, lo + chunk < n ? lo + chunk : n);
  }
}

}  // namespace pylstm
