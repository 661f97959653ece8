// The thread pool's stress run (cpu/test_hooks.h).
#include "cpu/test_hooks.h"

#include <atomic>
#include <memory>
#include <random>
#include <stdexcept>
#include <vector>

#include "cpu/threads.h"

namespace pylstm {
namespace {

struct InjectedFailure : std::runtime_error {
  InjectedFailure() : std::runtime_error("injected") {}
};

}  // namespace

PoolStressResult pool_stress_run(int runs, int max_threads, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::unique_ptr<std::atomic<int>[]>> ran(static_cast<size_t>(runs));
  std::vector<int> sizes(static_cast<size_t>(runs)), nts(static_cast<size_t>(runs));  // team, asked
  int64_t bad = 0, caught = 0;
  for (int r = 0; r < runs; ++r) {
    const int nt = 2 + int(rng() % uint64_t(max_threads - 1));
    const int steps = 1 + int(rng() % 4);
    const bool inject = rng() % 3 == 0;
    const int fail_tid = int(rng() % uint64_t(nt)), fail_step = int(rng() % uint64_t(steps));
    const int where = int(rng() % 3);
    ran[r].reset(new std::atomic<int>[nt]());
    sizes[r] = nts[r] = nt;
    std::unique_ptr<std::atomic<int>[]> reached(new std::atomic<int>[nt]());
    std::atomic<int> early{0};
    std::atomic<int>* my_ran = ran[r].get();
    // The team's size: nt on the pool; an OpenMP runtime may give fewer (a thread limit).
    std::atomic<int> size{nt};
    const bool omp = openmp_runtime_set();
    bool got = false;
    try {
      parallel_run(nt, [&](const Team& team) {
        const int t = team.tid();
        my_ran[t].fetch_add(1);
        if (omp && team.size() <= nt) size.store(team.size());
        else if (team.size() != nt) early.fetch_add(1);
        for (int st = 0; st < steps; ++st) {
          const bool fail_here = inject && t == fail_tid && st == fail_step;
          if (fail_here && where == 0) throw InjectedFailure();
          reached[t].store(st + 1, std::memory_order_release);
          const int token = team.arrive();
          if (fail_here && where == 1) throw InjectedFailure();
          team.wait(token);
          for (int u = 0; u < team.size(); ++u) {
            if (reached[u].load(std::memory_order_acquire) < st + 1) early.fetch_add(1);
          }
          if (fail_here && where == 2) throw InjectedFailure();
          team.barrier();  // nobody moves on to step st + 1 before all have checked step st
        }
      });
    } catch (const InjectedFailure&) {
      got = true;
      ++caught;
    }
    // (an injected failure's thread may be past the team's end: then nothing is thrown)
    const bool thrown = inject && fail_tid < size.load();
    bad += got != thrown;
    if (!inject) bad += early.load();
    sizes[r] = size.load();
    for (int u = 0; u < nt; ++u) bad += my_ran[u].load() != (u < sizes[r] ? 1 : 0);
  }
  // a worker running an earlier run's task again would show up here
  for (int r = 0; r < runs; ++r) {
    for (int u = 0; u < nts[r]; ++u) bad += ran[r][u].load() != (u < sizes[r] ? 1 : 0);
  }
  return {bad, caught};
}

}  // namespace pylstm
