// The one thread-count knob: it sets OpenBLAS's thread count (GEMMs) and the OpenMP team size
// of the pointwise passes and clipping. Called by pylstm.set_num_threads through the bindings.
#include <cblas.h>

#include <atomic>

#include "pylstm.h"
#include "threads.h"

namespace pylstm {

static std::atomic<int> g_num_threads{1};

void set_num_threads(int n) {
  if (n < 1) n = 1;
  g_num_threads.store(n);
  scipy_openblas_set_num_threads(n);
}

int get_num_threads() { return g_num_threads.load(); }

}  // namespace pylstm
