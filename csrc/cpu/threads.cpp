// The thread pool behind parallel_run (cpu/threads.h) and the one thread-count knob. A run wakes
// its sleeping workers once; inside the run nobody sleeps (a barrier spins, then yields the core,
// so a step never pays a wake-up). After a run workers linger, spinning, for as long as a
// wake-up costs (measured: the pool's wake-up latency), then sleep on a condition variable so
// that they do not compete with NumPy's or PyTorch's threads between calls. OpenBLAS is set to
// one thread: the pool's threads call it on their own slices.
#include <cblas.h>
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "cpu/api.h"
#include "cpu/threads.h"

namespace pylstm {

namespace {

// Spinning is timed, not counted in pauses: a PAUSE takes about 140 cycles on recent Intel
// cores and a few to 65 on AMD's, so a count tuned on one spins ten times longer on another.
int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch()).count();
}

// The machine's wake-up latency: from a run's publication to a sleeping worker running it (the
// futex wake, and in a virtual machine waking the idle vCPU: 10-50 us on one host, reportedly
// milliseconds on others). Measured by every run that finds a worker asleep, it sizes both
// spins: a worker lingers after a run for as long as a wake-up would cost (if the next call
// comes later, the spin cost at most what it tried to save: the rent-or-buy rule), and a
// barrier spins that long before it starts yielding the core. The estimate follows a lower
// sample at once and a higher one by 1/16 of the gap: a wake-up delayed because other threads
// held the cores (NumPy's, say) says nothing about the wake-up itself, and spinning longer
// after it would take the cores from them (a 1 ms linger slowed NumPy matmuls between calls
// by 1.7x and sped nothing up; benchmarks/RESULTS.md).
std::atomic<int64_t> g_wake_ns{50'000};
constexpr int64_t kMinSpinNs = 20'000, kMaxSpinNs = 1'000'000;  // bounds on both spins

int64_t spin_ns() { return std::clamp(g_wake_ns.load(std::memory_order_relaxed), kMinSpinNs, kMaxSpinNs); }

void record_wake(int64_t sample) {
  const int64_t old = g_wake_ns.load(std::memory_order_relaxed);
  sample = std::clamp<int64_t>(sample, 0, kMaxSpinNs);
  // (concurrent workers may lose a sample to each other: harmless for an estimate)
  g_wake_ns.store(sample <= old ? sample : old + (sample - old) / 16, std::memory_order_relaxed);
}

std::atomic<int64_t> g_runs{0}, g_parked_wakes{0}, g_moved{0};

// A worker woken on the caller's CPU (the scheduler places a wakee near its waker, and in a
// VM an idle vCPU may look unavailable) would take turns with the caller at every barrier
// until a load balancer separates them. Narrowing its affinity to the other CPUs it may use
// moves it at once; restoring the mask keeps it where it landed.
void move_off(int cpu) {
  cpu_set_t mask;
  if (cpu < 0 || sched_getaffinity(0, sizeof(mask), &mask) != 0) return;
  if (!CPU_ISSET(cpu, &mask) || CPU_COUNT(&mask) < 2) return;
  cpu_set_t others = mask;
  CPU_CLR(cpu, &others);
  if (sched_setaffinity(0, sizeof(others), &others) == 0) {
    sched_setaffinity(0, sizeof(mask), &mask);
    g_moved.fetch_add(1, std::memory_order_relaxed);
  }
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// One thread's share of a run: fn(team). An exception stays on the thread (none may leave a
// pool worker or an OpenMP region): the run keeps the first one, and its other threads leave at
// their next barrier (TeamAborted).
void run_member(const std::function<void(const Team&)>& fn, const Team& team, std::atomic<bool>& failed,
                std::mutex& error_mu, std::exception_ptr& error) {
  try {
    fn(team);
  } catch (const TeamAborted&) {
    // another thread failed first; its exception is the one reported
  } catch (...) {
    std::lock_guard<std::mutex> lk(error_mu);
    if (!error) error = std::current_exception();
    failed.store(true, std::memory_order_release);
  }
}

class Pool {
 public:
  void run(int threads, const std::function<void(const Team&)>& fn) {
    std::lock_guard<std::mutex> run_lock(run_mu_);
    threads = std::min<int>(threads, int(kSizeMask));
    if (cpus_cap_ < threads) {  // no worker is in a run here: safe to replace
      cpus_.reset(new std::atomic<int>[size_t(threads)]);
      cpus_cap_ = threads;
    }
    for (int i = 0; i < threads; ++i) cpus_[i].store(-1, std::memory_order_relaxed);
    g_runs.fetch_add(1, std::memory_order_relaxed);
    while (int(workers_) < threads - 1) {
      // The worker starts from the current generation, so it runs the task published below.
      std::thread(&Pool::worker, this, int(workers_) + 1, gen_.load()).detach();
      ++workers_;
    }
    task_ = &fn;
    arrived_.store(0, std::memory_order_relaxed);
    failed_.store(false, std::memory_order_relaxed);
    error_ = nullptr;
    remaining_.store(threads - 1, std::memory_order_relaxed);
    caller_cpu_.store(sched_getcpu(), std::memory_order_relaxed);
    published_ns_.store(now_ns(), std::memory_order_relaxed);
    {
      // The run's thread count travels in the same word as its generation: a worker left out
      // of one run and preempted must not read the next run's count with the old generation
      // (it would run the next task once too often; found by a stress test under ASan).
      std::lock_guard<std::mutex> lk(mu_);
      const uint64_t next = (gen_.load(std::memory_order_relaxed) >> kSizeBits) + 1;
      gen_.store((next << kSizeBits) | uint64_t(threads), std::memory_order_release);
    }
    cv_.notify_all();
    run_task(0, threads);
    // Always wait for every worker: they use fn and the caller's stack until they return.
    while (remaining_.load(std::memory_order_acquire) != 0) cpu_relax();
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void run_task(int tid, int size) {
    run_member(*task_, Team(tid, size, &arrived_, &phase_, &failed_, cpus_.get()), failed_, error_mu_, error_);
  }
  void worker(int wid, uint64_t seen) {
    for (;;) {
      uint64_t g = gen_.load(std::memory_order_acquire);
      const int64_t start = now_ns(), linger = spin_ns();
      bool slept = false;
      for (int spins = 0; g == seen; ++spins) {
        cpu_relax();
        if ((spins & 63) == 63 && now_ns() - start > linger) {
          std::unique_lock<std::mutex> lk(mu_);
          if (gen_.load(std::memory_order_acquire) == seen) {
            slept = true;
            cv_.wait(lk, [&] { return gen_.load(std::memory_order_acquire) != seen; });
          }
        }
        g = gen_.load(std::memory_order_acquire);
      }
      seen = g;
      const int size = int(g & kSizeMask);  // this generation's thread count
      if (wid < size) {
        if (slept) {
          g_parked_wakes.fetch_add(1, std::memory_order_relaxed);
          record_wake(now_ns() - published_ns_.load(std::memory_order_relaxed));
        }
        if (sched_getcpu() == caller_cpu_.load(std::memory_order_relaxed)) move_off(caller_cpu_.load());
        run_task(wid, size);
        remaining_.fetch_sub(1, std::memory_order_release);
      }
    }
  }

  std::mutex run_mu_;  // one run at a time
  std::mutex mu_;      // guards sleeping on cv_
  std::condition_variable cv_;
  static constexpr int kSizeBits = 20;  // thread counts below 2^20 (capped at the CPUs)
  static constexpr uint64_t kSizeMask = (uint64_t(1) << kSizeBits) - 1;
  std::atomic<uint64_t> gen_{0};  // (generation << kSizeBits) | thread count of that run
  std::atomic<int> remaining_{0};
  std::atomic<int> arrived_{0};
  std::atomic<int> phase_{0};
  std::atomic<bool> failed_{false};
  std::mutex error_mu_;
  std::exception_ptr error_;  // the first exception of the current run
  const std::function<void(const Team&)>* task_ = nullptr;
  size_t workers_ = 0;
  std::unique_ptr<std::atomic<int>[]> cpus_;  // Team's per-thread CPUs, cpus_cap_ slots
  int cpus_cap_ = 0;
  std::atomic<int> caller_cpu_{-1};       // the caller's CPU when it published the run
  std::atomic<int64_t> published_ns_{0};  // when it published it
};

// Leaked on purpose: worker threads are detached and may outlive static destructors.
Pool* g_pool = nullptr;
std::once_flag g_pool_once;
std::atomic<int> g_num_threads{1};

// The OpenMP runtime runs go to, when set (set_openmp_runtime). Replaced ones are leaked: a
// run in flight on another thread may still hold one.
struct OmpRuntime {
  OmpParallelFn parallel;
  OmpQueryFn thread_num, num_threads;
};
std::atomic<const OmpRuntime*> g_omp{nullptr};

// A forked child has none of the parent's workers: give it a fresh pool (and not the parent's
// OpenMP runtime, whose threads it lacks too).
void after_fork_in_child() {
  if (g_pool) g_pool = new Pool();  // (none yet: pool() makes it on first use)
  g_omp.store(nullptr);
}

// Registered once, by whichever comes first: the pool or an OpenMP runtime (a child forked
// after either must not use the parent's threads: libgomp's hang in a forked child).
void watch_forks() {
  static std::once_flag once;
  std::call_once(once, [] { pthread_atfork(nullptr, nullptr, after_fork_in_child); });
}

Pool& pool() {
  std::call_once(g_pool_once, [] {
    g_pool = new Pool();
    watch_forks();
  });
  return *g_pool;
}

thread_local bool t_in_run = false;

// One run on the OpenMP runtime: the Team's shared state and the first exception (run_member).
struct OmpRun {
  const std::function<void(const Team&)>* fn;
  const OmpRuntime* rt;
  std::atomic<int> arrived{0}, phase{0};
  std::atomic<bool> failed{false};
  std::unique_ptr<std::atomic<int>[]> cpus;
  std::mutex error_mu;
  std::exception_ptr error;
};

void omp_body(void* p) {
  auto* run = static_cast<OmpRun*>(p);
  // The team may be smaller than asked (an OpenMP thread limit): Team splits by its real size.
  const int tid = run->rt->thread_num(), size = run->rt->num_threads();
  const bool was_in_run = t_in_run;
  t_in_run = true;  // a nested parallel_run from inside fn runs serially
  run_member(*run->fn, Team(tid, size, &run->arrived, &run->phase, &run->failed, run->cpus.get()), run->failed,
             run->error_mu, run->error);
  t_in_run = was_in_run;
}

}  // namespace

void set_openmp_runtime(OmpParallelFn parallel, OmpQueryFn thread_num, OmpQueryFn num_threads) {
  watch_forks();
  g_omp.store(parallel && thread_num && num_threads ? new OmpRuntime{parallel, thread_num, num_threads}
                                                    : nullptr);
}

bool openmp_runtime_set() { return g_omp.load() != nullptr; }

void Team::barrier() const { wait(arrive()); }

int Team::arrive() const {
  if (size_ <= 1) return 0;
  if (cpus_) cpus_[tid_].store(sched_getcpu(), std::memory_order_relaxed);
  const int ph = phase_->load(std::memory_order_acquire);
  if (arrived_->fetch_add(1, std::memory_order_acq_rel) == size_ - 1) {
    arrived_->store(0, std::memory_order_relaxed);
    phase_->store(int(unsigned(ph) + 1u), std::memory_order_release);  // wraps, no overflow
  }
  return ph;
}

void Team::wait(int token) const {
  if (size_ <= 1) return;
  if (phase_->load(std::memory_order_acquire) != token) return;
  // Spin for up to the wake-up latency (the usual wait is a few microseconds), then yield the
  // core at each check: when other work shares the cores, a thread that only spins keeps the
  // late thread from running (with more threads than cores, spinning alone made runs about 8
  // times slower). No spin when a thread of the run last arrived on this CPU.
  int64_t budget = spin_ns();
  if (cpus_) {
    const int me = sched_getcpu();
    for (int i = 0; i < size_; ++i) {
      if (i != tid_ && cpus_[i].load(std::memory_order_relaxed) == me) budget = 0;
    }
  }
  const int64_t start = budget > 0 ? now_ns() : 0;
  for (int spins = 0; phase_->load(std::memory_order_acquire) == token; ++spins) {
    if (failed_ && failed_->load(std::memory_order_acquire)) throw TeamAborted{};
    if (budget > 0) {
      cpu_relax();
      if ((spins & 63) == 63 && now_ns() - start > budget) budget = 0;
    } else {
      std::this_thread::yield();
    }
  }
}

void Team::split(int64_t n, int64_t align, int64_t& begin, int64_t& end) const {
  const int64_t units = (n + align - 1) / align;
  const int64_t u0 = units * tid_ / size_, u1 = units * (tid_ + 1) / size_;
  begin = std::min(n, u0 * align);
  end = std::min(n, u1 * align);
}

void parallel_run(int threads, const std::function<void(const Team&)>& fn) {
  std::atomic<int> arrived{0}, phase{0};
  if (threads <= 1 || t_in_run) {  // serial, or a nested call from inside a run
    fn(Team(0, 1, &arrived, &phase));
    return;
  }
  struct InRun {
    InRun() { t_in_run = true; }
    ~InRun() { t_in_run = false; }  // also when the run rethrows
  } in_run;
  if (const OmpRuntime* rt = g_omp.load()) {
    // One run at a time, as on the pool: each host thread would get a team of its own.
    static std::mutex omp_run_mu;
    std::lock_guard<std::mutex> one_run(omp_run_mu);
    OmpRun run;
    run.fn = &fn;
    run.rt = rt;
    run.cpus.reset(new std::atomic<int>[size_t(threads)]);
    for (int i = 0; i < threads; ++i) run.cpus[i].store(-1, std::memory_order_relaxed);
    g_runs.fetch_add(1, std::memory_order_relaxed);
    rt->parallel(omp_body, &run, unsigned(threads), 0);
    if (run.error) std::rethrow_exception(run.error);
    return;
  }
  pool().run(threads, fn);
}

// CPUs this process may run on.
static int available_cpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

void set_num_threads(int n) {
  // More threads than CPUs never helps a pool that synchronizes every time step; it only makes
  // threads wait for descheduled ones. The request is capped (get_num_threads tells).
  n = std::min(std::max(n, 1), available_cpus());
  g_num_threads.store(n);
  scipy_openblas_set_num_threads(1);
}

int get_num_threads() { return g_num_threads.load(); }

PoolStats pool_stats() {
  return {g_runs.load(), g_parked_wakes.load(), g_moved.load(), double(g_wake_ns.load()) / 1e3};
}

}  // namespace pylstm
