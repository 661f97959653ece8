// The emulation build's launcher (cuda/emu.h): kernels run on the calling CPU thread, blocks
// one after the other. A plain launch calls the body once per thread in order; a fiber launch
// gives every thread of a block its own stack (ucontext) and runs them round-robin, each until
// its next __syncthreads() or its return, so a barrier holds exactly as on a GPU: no thread of
// the block passes it before all have reached it.
#include <ucontext.h>

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/emu.h"
#include "cuda/runtime.h"
#include "cuda/graph_cache.h"
#include "cuda/pools.h"

namespace pylstm_emu {
namespace {

constexpr size_t kFiberStack = 64 * 1024;

struct FiberBlock {
  ucontext_t scheduler;
  std::vector<ucontext_t> ctx;
  std::vector<std::unique_ptr<char[]>> stacks;
  std::vector<char> done;
  unsigned current = 0;
  dim3 block;
  const std::function<void()>* body = nullptr;
};

thread_local FiberBlock* active = nullptr;  // the fiber launch running on this OS thread
thread_local bool in_plain_launch = false;

dim3 thread_index(unsigned linear, const dim3& b) {
  return dim3(linear % b.x, (linear / b.x) % b.y, linear / (b.x * b.y));
}

void fiber_main() {
  FiberBlock* fb = active;
  (*fb->body)();
  fb->done[fb->current] = 1;
  // returning ends the fiber: uc_link goes back to the scheduler
}

// getcontext/swapcontext "return twice"; kept out of the scheduler's loops (-Wclobbered).
__attribute__((noinline)) void init_fiber(FiberBlock& fb, unsigned t) {
  getcontext(&fb.ctx[t]);
  fb.ctx[t].uc_stack.ss_sp = fb.stacks[t].get();
  fb.ctx[t].uc_stack.ss_size = kFiberStack;
  fb.ctx[t].uc_link = &fb.scheduler;
  makecontext(&fb.ctx[t], fiber_main, 0);
  fb.done[t] = 0;
}

__attribute__((noinline)) void resume_fiber(FiberBlock& fb, unsigned t) {
  fb.current = t;
  swapcontext(&fb.scheduler, &fb.ctx[t]);
}

}  // namespace

void syncthreads() {
  if (active == nullptr) {
    throw std::logic_error(
        in_plain_launch ? "__syncthreads() in a kernel launched with PYLSTM_LAUNCH: use "
                          "PYLSTM_LAUNCH_SYNC for kernels with block barriers"
                        : "__syncthreads() outside a kernel");
  }
  FiberBlock* fb = active;
  swapcontext(&fb->ctx[fb->current], &fb->scheduler);
}

namespace {
thread_local std::vector<std::function<void()>>* recording = nullptr;  // see gpu::run_maybe_graphed
}  // namespace

void enqueue(const std::function<void()>& work) {
  if (recording != nullptr) recording->push_back(work);
  else work();
}

void launch_now(const dim3& grid, const dim3& block, bool fibers, const std::function<void()>& body);

void launch(const dim3& grid, const dim3& block, bool fibers, const std::function<void()>& body) {
  if (recording != nullptr) {
    recording->push_back([grid, block, fibers, body] { launch_now(grid, block, fibers, body); });
    return;
  }
  launch_now(grid, block, fibers, body);
}

void launch_now(const dim3& grid, const dim3& block, bool fibers, const std::function<void()>& body) {
  gridDim = grid;
  blockDim = block;
  const unsigned nthreads = block.x * block.y * block.z;
  if (!fibers) {
    in_plain_launch = true;
    struct Clear {
      ~Clear() { in_plain_launch = false; }
    } clear;  // also when the kernel throws
    for (unsigned bz = 0; bz < grid.z; ++bz)
      for (unsigned by = 0; by < grid.y; ++by)
        for (unsigned bx = 0; bx < grid.x; ++bx) {
          blockIdx = dim3(bx, by, bz);
          for (unsigned t = 0; t < nthreads; ++t) {
            threadIdx = thread_index(t, block);
            body();
          }
        }
    return;
  }
  if (active != nullptr) throw std::logic_error("nested fiber launch");
  FiberBlock fb;
  fb.block = block;
  fb.body = &body;
  fb.ctx.resize(nthreads);
  fb.done.resize(nthreads);
  for (unsigned t = 0; t < nthreads; ++t) fb.stacks.emplace_back(new char[kFiberStack]);
  active = &fb;
  struct Reset {
    ~Reset() { active = nullptr; }
  } reset;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        blockIdx = dim3(bx, by, bz);
        for (unsigned t = 0; t < nthreads; ++t) init_fiber(fb, t);
        // Rounds: every live thread runs to its next barrier or its end.
        for (;;) {
          unsigned finished = 0;
          for (unsigned t = 0; t < nthreads; ++t) {
            if (fb.done[t]) continue;
            threadIdx = thread_index(t, block);
            resume_fiber(fb, t);
            finished += fb.done[t];
          }
          unsigned live = 0;
          for (unsigned t = 0; t < nthreads; ++t) live += !fb.done[t];
          if (live == 0) break;
          if (finished != 0) {
            throw std::logic_error("block (" + std::to_string(bx) + ", " + std::to_string(by) +
                                   ", " + std::to_string(bz) + "): " + std::to_string(live) +
                                   " threads wait at __syncthreads() while " +
                                   std::to_string(finished) + " returned (divergent barrier)");
          }
        }
      }
}

}  // namespace pylstm_emu

// The device runtime of the emulation build (cuda/runtime.h): host memory is "device 0".
namespace pylstm {
namespace gpu {
namespace {
bool emu_tf32 = false;
}

int device_count(std::string* why) {
  if (why) why->clear();
  return 1;
}
int pointer_device(const void*, const char*) { return 0; }
DeviceGuard::DeviceGuard(int dev) : prev_(dev) {}
DeviceGuard::~DeviceGuard() = default;
std::int64_t cublas_workspace_bytes(int) { return 0; }
namespace {
int emu_cc = 90;
}
int compute_capability(int) { return emu_cc; }
void emu_set_compute_capability(int cc) { emu_cc = cc; }
GpuContext context(int, std::uintptr_t stream, void*, std::size_t) {
  GpuContext ctx;
  ctx.stream = reinterpret_cast<cudaStream_t>(stream);
  return ctx;
}
// Emulated graphs: a capture records the launches and GEMMs fn enqueues (cuda/emu.h), a replay
// runs the recording; the cache is the CUDA build's (cuda/graph_cache.h).
namespace {
using Recording = std::vector<std::function<void()>>;
std::atomic<bool> emu_graphs{false};
thread_local GraphCache<Recording> emu_cache;
void drop(Recording&) {}
}  // namespace

void set_use_graphs(bool on) { emu_graphs.store(on); }
bool get_use_graphs() { return emu_graphs.load(); }

void run_maybe_graphed(int dev, std::uintptr_t stream, const std::vector<std::uint64_t>& shape,
                       const std::vector<std::uint64_t>& addrs,
                       const std::function<void(const GpuContext&)>& fn, void*, std::size_t) {
  const GpuContext ctx = context(dev, stream);
  if (!emu_graphs.load() || pylstm_emu::recording != nullptr) {
    fn(ctx);
    return;
  }
  using Cache = GraphCache<Recording>;
  std::vector<std::uint64_t> full = Cache::full_key(shape, dev, get_allow_tf32());
  auto found = emu_cache.find(full, addrs);
  Recording* rec = found.first;
  if (found.second != Cache::Found::kReplay) {
    Recording work;  // a capture: the launches recorded, not run
    pylstm_emu::recording = &work;
    try {
      fn(ctx);
    } catch (...) {
      pylstm_emu::recording = nullptr;
      throw;
    }
    pylstm_emu::recording = nullptr;
    if (found.second == Cache::Found::kNone) {
      rec = &emu_cache.add(std::move(full), addrs, std::move(work), drop);
    } else {  // an update in place: the same launches on the new addresses
      *rec = std::move(work);
      emu_cache.updated(addrs);
    }
  }
  for (const auto& w : *rec) w();
}

std::vector<std::int64_t> graph_stats() { return emu_cache.stats(); }
void clear_graphs() { emu_cache.clear(drop); }

namespace {
std::mutex capture_mutex;
std::map<std::uintptr_t, int> capture_states;  // set by tests (emu_set_capture_state)
}  // namespace

Capture capture_state(std::uintptr_t stream) {
  std::lock_guard<std::mutex> lock(capture_mutex);
  const auto it = capture_states.find(stream == 0 ? 1 : stream);  // 0 and 1: the legacy stream
  return it == capture_states.end() ? Capture::kNone : Capture(it->second);
}

void emu_set_capture_state(std::uintptr_t stream, int state) {
  if (state < 0 || state > int(Capture::kLegacyBlocked)) throw std::invalid_argument("state must be 0, 1 or 2");
  std::lock_guard<std::mutex> lock(capture_mutex);
  if (state == 0) capture_states.erase(stream == 0 ? 1 : stream);
  else capture_states[stream == 0 ? 1 : stream] = state;
}

// One host thread runs every emulated launch in order: nothing to wait for. The event a real
// wait records is stood in for by a number from the same per-thread slots and pool as the CUDA
// build's (cuda/pools.h), so that a thread churn test counts what exiting threads leak.
namespace {
std::atomic<std::int64_t> emu_events_created{0};
DevicePool<std::int64_t>& emu_event_pool() {
  static auto* pool = new DevicePool<std::int64_t>;
  return *pool;
}
thread_local ThreadSlots<std::int64_t> emu_sync_events(emu_event_pool());
}  // namespace

void wait_for_producers(const std::vector<std::uintptr_t>& producers, std::uintptr_t consumer) {
  for (const std::uintptr_t p : producers) {
    if (p == consumer || ((p == 0 || p == 1) && (consumer == 0 || consumer == 1))) continue;
    emu_sync_events.get(0, [](int) { return ++emu_events_created; });
    return;
  }
}
// The emulated device: 16 multiprocessors of 2048 threads (the plan's arithmetic, not speed).
int64_t clip_target_blocks(int) { return 2 * (2048 / int64_t(kClipThreads)) * 16; }
std::vector<std::int64_t> resource_counts() { return {0, 0, emu_events_created.load()}; }  // (stand-in events only)
void set_allow_tf32(bool on) { emu_tf32 = on; }
bool get_allow_tf32() { return emu_tf32; }

}  // namespace gpu
}  // namespace pylstm
