// Test hooks of the CPU backend that are not kernels: the thread pool's stress run (bound as
// pylstm._cpu._pool_stress; tests/test_threading.py drives it in a subprocess).
#pragma once

#include <cstdint>

namespace pylstm {

struct PoolStressResult {
  int64_t inconsistencies;
  int64_t caught;
};

// Test hook for the thread pool: `runs` parallel runs with random thread counts in
// [2, max_threads] (more than the CPUs on purpose: threads get preempted), a few barrier
// steps each (split arrive/wait, then a full barrier), and in about a third of the runs an
// exception thrown by a random thread before, inside or after a barrier. Counts what must
// never happen: a thread index run other than exactly once (also checked again after all
// runs, for a late second run), a thread passing a barrier before the others reached it, an
// exception lost or invented. Returns (inconsistencies, exceptions caught).
// max_threads in [2, 64], runs >= 0 (the caller checks).
PoolStressResult pool_stress_run(int runs, int max_threads, uint64_t seed);

}  // namespace pylstm
