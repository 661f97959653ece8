// pylstm's one thread pool (cpu/threads.cpp). All CPU kernels run their parallel work here, with
// OpenBLAS kept single-threaded and called from inside the pool's threads: two pools spinning
// on the same cores (OpenBLAS's and OpenMP's) cost several times the work on 2 cores.
// Used by cpu/sequence.cpp and cpu/clip.cpp.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>

#include "cpu/api.h"

// Marks a CPU function to be compiled for AVX-512, AVX2+FMA and baseline x86-64, the best one
// picked at load time: the pointwise loops vectorize to the widest registers the CPU has
// without building for one machine (used by cpu/sequence.cpp and cpu/dense.cpp).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PYLSTM_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define PYLSTM_CLONES
#endif

namespace pylstm {

// Thrown by Team::wait in the threads of a run that another thread of it has left with an
// exception: they unwind instead of waiting forever for it (parallel_run catches it).
struct TeamAborted {};

// The context of one parallel run: thread id, thread count, and a spin barrier among them.
class Team {
 public:
  Team(int tid, int size, std::atomic<int>* arrived, std::atomic<int>* phase,
       const std::atomic<bool>* failed = nullptr, std::atomic<int>* cpus = nullptr)
      : tid_(tid), size_(size), arrived_(arrived), phase_(phase), failed_(failed), cpus_(cpus) {}
  int tid() const { return tid_; }
  int size() const { return size_; }
  // Waits until every thread of the run has reached the barrier (memory is synchronized).
  void barrier() const;
  // The barrier in two halves: arrive() says this thread's writes are done and returns a
  // token; wait(token) returns once every thread has arrived (and their writes are visible).
  // Work between the two overlaps the other threads' lateness. Every thread must arrive
  // exactly once per phase, and wait before arriving again. wait throws TeamAborted when
  // another thread of the run has thrown. A wait spins for at most the pool's measured wake-up
  // latency, then yields the core at each check; it never sleeps inside a run. It yields at
  // once when another thread of the run last arrived on this thread's CPU: spinning there only
  // delays the thread it waits for.
  int arrive() const;
  void wait(int token) const;
  // The [begin, end) part of [0, n) this thread owns when n is split in multiples of `align`.
  void split(int64_t n, int64_t align, int64_t& begin, int64_t& end) const;

 private:
  int tid_, size_;
  std::atomic<int>* arrived_;
  std::atomic<int>* phase_;
  const std::atomic<bool>* failed_;
  std::atomic<int>* cpus_;  // the CPU each thread last arrived on (size_ slots), or nullptr
};

// What the pool has measured and done since the process started (diagnostics for the
// benchmarks; pylstm._cpu._pool_stats).
struct PoolStats {
  int64_t runs;             // parallel runs
  int64_t parked_wakes;     // workers that were asleep when a run was published
  int64_t moved;            // workers moved off the caller's CPU at the start of a run
  double wake_latency_us;   // the measured wake-up latency (its running average)
};
PoolStats pool_stats();

// An OpenMP runtime already loaded in the process (PyTorch's libgomp, set by pylstm.torch) to
// run parallel_run's work on instead of the pool: its GOMP_parallel, omp_get_thread_num and
// omp_get_num_threads. Inside PyTorch the pool's threads would share the cores with torch's
// OpenMP threads, which spin for milliseconds after each of torch's parallel ops: run on those
// threads, pylstm's work starts on threads already awake and competes with none. All nullptr:
// back to the pool. A forked child returns to the pool.
using OmpParallelFn = void (*)(void (*)(void*), void*, unsigned, unsigned);
using OmpQueryFn = int (*)();
void set_openmp_runtime(OmpParallelFn parallel, OmpQueryFn thread_num, OmpQueryFn num_threads);
bool openmp_runtime_set();

// Runs fn(team) on `threads` threads (the caller is thread 0) and returns when all are done.
// Calls from several host threads at once are serialized. threads <= 1 runs fn on the caller.
// An exception thrown by fn on any thread (std::bad_alloc from a scratch buffer, say) makes
// the other threads leave at their next barrier; once all have returned, the first exception
// is rethrown on the caller (pybind turns it into a Python exception).
void parallel_run(int threads, const std::function<void(const Team&)>& fn);

// Calls body(begin, end) for fixed chunks covering [0, n) on the pool. Chunk boundaries do not
// depend on the thread count, so per-chunk results are reproducible; serial below min_parallel.
template <class F>
void parallel_chunks(int64_t n, int64_t chunk, int64_t min_parallel, F&& body) {
  const int64_t nchunks = (n + chunk - 1) / chunk;
  int nt = get_num_threads();
  if (n < min_parallel || nchunks <= 1) nt = 1;
  if (nt > nchunks) nt = int(nchunks);
  auto run_chunks = [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t lo = c * chunk;
      body(lo, lo + chunk < n ? lo + chunk : n);
    }
  };
  if (nt <= 1) {
    run_chunks(0, nchunks);
    return;
  }
  parallel_run(nt, [&](const Team& team) {
    int64_t c0, c1;
    team.split(nchunks, 1, c0, c1);
    run_chunks(c0, c1);
  });
}

}  // namespace pylstm
