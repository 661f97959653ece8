// The real device runtime for pylstm._cuda (cuda/runtime.h): device queries, pointer ownership,
// the per-thread, per-device cuBLAS handle cache, launch checks and the row-major GEMM that
// cuda/kernels.cu calls. Every CUDA and cuBLAS call is checked; a failed call raises with the
// call's name and the library's message.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/runtime.h"
#include "cuda/graph_cache.h"
#include "cuda/pools.h"
#include "cuda/api.h"

namespace pylstm {

namespace {

using gpu::DevicePool;
using gpu::ThreadSlots;

void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear a non-sticky error so that it does not fail the next call
    throw std::runtime_error(std::string(what) + " failed: " + cudaGetErrorName(err) + " (" +
                             cudaGetErrorString(err) + ")");
  }
}

const char* cublas_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "CUBLAS_STATUS_UNKNOWN";
  }
}

void check_cublas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) {
    cudaGetLastError();
    throw std::runtime_error(std::string(what) + " failed: " + cublas_name(s));
  }
}

std::atomic<bool> allow_tf32{false};

// One handle per (host thread, device) at a time: a cuBLAS handle must not be used by two
// threads at once, and binding it to the caller's stream per call is then race-free. A thread
// that exits hands its handles to a process-wide pool, where the next thread that needs one on
// that device takes it (short-lived threads would otherwise leave a handle and its cuBLAS
// workspace behind each). Handles are never destroyed (cuda/pools.h).
struct HandleSlot {
  cublasHandle_t handle = nullptr;
  bool tf32 = false;
};

// How many of each pooled resource this process created (gpu::resource_counts): a thread churn
// test checks that exiting threads hand theirs on instead of leaking them.
std::atomic<std::int64_t> created_handles{0}, created_streams{0}, created_events{0};

DevicePool<HandleSlot>& handle_pool() {
  static auto* pool = new DevicePool<HandleSlot>;  // never destroyed (see above)
  return *pool;
}

struct ThreadHandles {
  std::vector<HandleSlot> slots;  // per device
  ~ThreadHandles() {
    for (size_t dev = 0; dev < slots.size(); ++dev) {
      if (slots[dev].handle != nullptr) handle_pool().give(int(dev), slots[dev]);
    }
  }
};
thread_local ThreadHandles handles;

// A handle for this thread on `dev`: a pooled one if some exited thread left one, else new.
HandleSlot take_handle(int dev) {
  HandleSlot slot;
  if (handle_pool().take(dev, slot)) return slot;
  check_cublas(cublasCreate(&slot.handle), "cublasCreate");
  ++created_handles;
  check_cublas(cublasSetMathMode(slot.handle, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
  return slot;
}

}  // namespace

void check_launch(const char* kernel) {
  check_cuda(cudaGetLastError(), (std::string("launch of ") + kernel).c_str());
}

namespace gpu {

int device_count(std::string* why) {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();
    if (why) *why = std::string("cudaGetDeviceCount: ") + cudaGetErrorName(err) + " (" +
                    cudaGetErrorString(err) + ")";
    return 0;
  }
  if (n == 0 && why) *why = "cudaGetDeviceCount: no CUDA device";
  return n;
}

int pointer_device(const void* p, const char* name) {
  std::string why;
  if (device_count(&why) == 0) {
    throw std::runtime_error(std::string(name) + ": no CUDA GPU is visible to pylstm (" + why +
                             ")");
  }
  cudaPointerAttributes attr{};
  const cudaError_t err = cudaPointerGetAttributes(&attr, p);
  if (err != cudaSuccess) {
    cudaGetLastError();
    throw std::invalid_argument(std::string(name) + ": its pointer is not CUDA memory (" +
                                cudaGetErrorName(err) + ")");
  }
  if (attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged) return attr.device;
  throw std::invalid_argument(std::string(name) +
                              " points to host memory; the CUDA backend takes device arrays");
}

namespace {
// cuCtxGetCurrent / cuCtxSetCurrent through the runtime's driver entry points (no link to
// libcuda, so the module still imports where there is no driver); null if unavailable.
using CtxGetFn = int (*)(void**);
using CtxSetFn = int (*)(void*);
struct CtxApi {
  CtxGetFn get = nullptr;
  CtxSetFn set = nullptr;
};

const CtxApi& ctx_api() {
  static const CtxApi api = [] {
    CtxApi a;
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuCtxGetCurrent", &f, 4000, cudaEnableDefault, &q) ==
            cudaSuccess && q == cudaDriverEntryPointSuccess) {
      a.get = reinterpret_cast<CtxGetFn>(f);
    }
    f = nullptr;
    if (cudaGetDriverEntryPointByVersion("cuCtxSetCurrent", &f, 4000, cudaEnableDefault, &q) ==
            cudaSuccess && q == cudaDriverEntryPointSuccess) {
      a.set = reinterpret_cast<CtxSetFn>(f);
    }
    cudaGetLastError();
    if (!a.get || !a.set) a = CtxApi{};
    return a;
  }();
  return api;
}
}  // namespace

DeviceGuard::DeviceGuard(int dev) {
  const CtxApi& api = ctx_api();
  have_ctx_ = api.get != nullptr && api.get(&prev_ctx_) == 0;  // CUDA_SUCCESS
  check_cuda(cudaGetDevice(&prev_), "cudaGetDevice");
  if (prev_ != dev) check_cuda(cudaSetDevice(dev), "cudaSetDevice");
}

DeviceGuard::~DeviceGuard() {
  if (have_ctx_) {
    ctx_api().set(prev_ctx_);  // the previous context, or none
  } else {
    int cur = -1;
    if (cudaGetDevice(&cur) == cudaSuccess && cur != prev_ && prev_ >= 0) cudaSetDevice(prev_);
  }
  cudaGetLastError();
}

// dev must be a visible device (checked before any per-device table grows to it).
static void check_device_index(int dev) {
  std::string why;
  const int n = device_count(&why);
  if (dev < 0 || dev >= n) {
    throw std::invalid_argument("device " + std::to_string(dev) + " is not one of the " + std::to_string(n) +
                                " visible GPUs" + (why.empty() ? "" : " (" + why + ")"));
  }
}

int compute_capability(int dev) {
  check_device_index(dev);
  static std::mutex mutex;
  static std::vector<int> cached;
  std::lock_guard<std::mutex> lock(mutex);
  if (cached.size() <= size_t(dev)) cached.resize(size_t(dev) + 1, 0);
  if (cached[size_t(dev)] == 0) {
    int major = 0, minor = 0;
    check_cuda(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), "cudaDeviceGetAttribute");
    check_cuda(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev), "cudaDeviceGetAttribute");
    cached[size_t(dev)] = 10 * major + minor;
  }
  return cached[size_t(dev)];
}

std::int64_t cublas_workspace_bytes(int dev) {
  return compute_capability(dev) >= 90 ? (std::int64_t(32) << 20) : (std::int64_t(4) << 20);
}

GpuContext context(int dev, std::uintptr_t stream, void* blas_work, std::size_t blas_bytes) {
  if (dev < 0) throw std::invalid_argument("device index must be >= 0");
  std::vector<HandleSlot>& slots = handles.slots;
  if (slots.size() <= size_t(dev)) slots.resize(size_t(dev) + 1);
  HandleSlot& slot = slots[size_t(dev)];
  if (slot.handle == nullptr) slot = take_handle(dev);
  const bool want_tf32 = allow_tf32.load();
  if (slot.tf32 != want_tf32) {
    check_cublas(cublasSetMathMode(slot.handle, want_tf32 ? CUBLAS_TF32_TENSOR_OP_MATH
                                                          : CUBLAS_DEFAULT_MATH),
                 "cublasSetMathMode");
    slot.tf32 = want_tf32;
  }
  GpuContext ctx;
  ctx.stream = reinterpret_cast<cudaStream_t>(stream);
  ctx.blas_handle = slot.handle;
  check_cublas(cublasSetStream(slot.handle, ctx.stream), "cublasSetStream");
  if (blas_work != nullptr) {  // after cublasSetStream, which resets it
    check_cublas(cublasSetWorkspace(slot.handle, blas_work, blas_bytes), "cublasSetWorkspace");
  }
  return ctx;
}

int64_t clip_target_blocks(int dev) {
  check_device_index(dev);
  static std::mutex mutex;
  static std::vector<int64_t> cached;
  std::lock_guard<std::mutex> lock(mutex);
  if (cached.size() <= size_t(dev)) cached.resize(size_t(dev) + 1, 0);
  if (cached[size_t(dev)] == 0) {
    int sms = 0, threads = 0;
    check_cuda(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
    check_cuda(cudaDeviceGetAttribute(&threads, cudaDevAttrMaxThreadsPerMultiProcessor, dev),
               "cudaDeviceGetAttribute");
    const int64_t per_sm = std::max<int64_t>(1, threads / int64_t(kClipThreads));
    cached[size_t(dev)] = 2 * per_sm * std::max(1, sms);
  }
  return cached[size_t(dev)];
}

namespace {
cudaStream_t stream_of(std::uintptr_t h) {
  if (h == 0 || h == 1) return cudaStreamLegacy;
  if (h == 2) return cudaStreamPerThread;
  return reinterpret_cast<cudaStream_t>(h);
}

// One reusable event per host thread and device (recorded and waited on in stream order, so
// reusing it between calls is safe); an exiting thread hands its events to the pool, like the
// cuBLAS handles (cuda/pools.h).
DevicePool<cudaEvent_t>& event_pool() {
  static auto* pool = new DevicePool<cudaEvent_t>;  // never destroyed (cuda/pools.h)
  return *pool;
}
thread_local ThreadSlots<cudaEvent_t> sync_events(event_pool());

cudaEvent_t sync_event(int dev) {
  return sync_events.get(dev, [](int) {
    cudaEvent_t e = nullptr;
    check_cuda(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreateWithFlags");
    ++created_events;
    return e;
  });
}
}  // namespace

Capture capture_state(std::uintptr_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  const cudaError_t err = cudaStreamIsCapturing(stream_of(stream), &status);
  if (err == cudaErrorStreamCaptureImplicit) {
    cudaGetLastError();
    return Capture::kLegacyBlocked;
  }
  check_cuda(err, "cudaStreamIsCapturing");
  return status == cudaStreamCaptureStatusNone ? Capture::kNone : Capture::kActive;
}

void emu_set_capture_state(std::uintptr_t, int) {
  throw std::logic_error("_set_capture_state exists for the emulation's tests only");
}

void wait_for_producers(const std::vector<std::uintptr_t>& producers, std::uintptr_t consumer) {
  const cudaStream_t to = stream_of(consumer);
  if (producers.empty()) return;
  // While the caller captures its own graph on this stream, an event recorded on another
  // (uncaptured) stream cannot be waited on inside the capture: the caller orders its streams.
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  check_cuda(cudaStreamIsCapturing(to, &status), "cudaStreamIsCapturing");
  if (status != cudaStreamCaptureStatusNone) return;
  cudaEvent_t event = nullptr;
  for (const std::uintptr_t p : producers) {
    const cudaStream_t from = stream_of(p);
    if (from == to) continue;
    if (event == nullptr) {
      int dev = 0;
      check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
      event = sync_event(dev);
    }
    check_cuda(cudaEventRecord(event, from), "cudaEventRecord on an input array's stream");
    check_cuda(cudaStreamWaitEvent(to, event, 0), "cudaStreamWaitEvent");
  }
}

// --- CUDA graphs (cuda/runtime.h: run_maybe_graphed) ------------------------------------------
namespace {
std::atomic<bool> use_graphs{false};

// The private stream and the two join events of one device for one host thread.
struct GraphStream {
  cudaStream_t stream = nullptr;
  cudaEvent_t in = nullptr, out = nullptr;
};

DevicePool<GraphStream>& graph_stream_pool() {
  static auto* pool = new DevicePool<GraphStream>;  // never destroyed, like the handles
  return *pool;
}

void destroy_exec(cudaGraphExec_t& exec) {
  cudaGraphExecDestroy(exec);  // an executable graph still running is freed when it completes
}

// Per host thread: its streams and events per device, and its graphs. A thread that exits
// destroys its graphs and hands its streams and events to the pool.
struct ThreadGraphs {
  std::vector<GraphStream> dev;
  GraphCache<cudaGraphExec_t> cache;
  ~ThreadGraphs() {
    cache.clear(destroy_exec);
    cudaGetLastError();
    for (size_t d = 0; d < dev.size(); ++d) {
      if (dev[d].stream != nullptr) graph_stream_pool().give(int(d), dev[d]);
    }
  }
};
thread_local ThreadGraphs thread_graphs;

GraphStream& graph_device(int dev) {
  std::vector<GraphStream>& v = thread_graphs.dev;
  if (v.size() <= size_t(dev)) v.resize(size_t(dev) + 1);
  GraphStream& d = v[size_t(dev)];
  if (d.stream == nullptr && !graph_stream_pool().take(dev, d)) {
    check_cuda(cudaStreamCreateWithFlags(&d.stream, cudaStreamNonBlocking), "cudaStreamCreate");
    check_cuda(cudaEventCreateWithFlags(&d.in, cudaEventDisableTiming), "cudaEventCreate");
    check_cuda(cudaEventCreateWithFlags(&d.out, cudaEventDisableTiming), "cudaEventCreate");
    ++created_streams;
  }
  return d;
}

// Captures fn's work on `stream` into a graph (launches recorded, not run). On any failure the
// capture is ended and discarded (the stream leaves capture mode) before the error propagates.
cudaGraph_t capture(cudaStream_t stream, const GpuContext& ctx,
                    const std::function<void(const GpuContext&)>& fn) {
  check_cuda(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal),
             "cudaStreamBeginCapture");
  cudaGraph_t graph = nullptr;
  try {
    fn(ctx);
  } catch (...) {
    cudaStreamEndCapture(stream, &graph);
    if (graph != nullptr) cudaGraphDestroy(graph);
    cudaGetLastError();
    throw;
  }
  check_cuda(cudaStreamEndCapture(stream, &graph), "cudaStreamEndCapture");
  return graph;
}

// An executable of `graph`, which it destroys.
cudaGraphExec_t instantiate(cudaGraph_t graph) {
  cudaGraphExec_t exec = nullptr;
  const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  check_cuda(err, "cudaGraphInstantiate");
  return exec;
}
}  // namespace

void set_use_graphs(bool on) { use_graphs.store(on); }
bool get_use_graphs() { return use_graphs.load(); }

void run_maybe_graphed(int dev, std::uintptr_t stream, const std::vector<std::uint64_t>& shape,
                       const std::vector<std::uint64_t>& addrs,
                       const std::function<void(const GpuContext&)>& fn, void* blas_work,
                       std::size_t blas_bytes) {
  const cudaStream_t caller = stream_of(stream);
  if (!use_graphs.load()) {
    fn(context(dev, stream, blas_work, blas_bytes));
    return;
  }
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  check_cuda(cudaStreamIsCapturing(caller, &status), "cudaStreamIsCapturing");
  if (status != cudaStreamCaptureStatusNone) {  // part of the caller's own graph
    fn(context(dev, stream, blas_work, blas_bytes));
    return;
  }
  GraphStream& d = graph_device(dev);
  using Cache = GraphCache<cudaGraphExec_t>;
  Cache& cache = thread_graphs.cache;
  std::vector<std::uint64_t> full = Cache::full_key(shape, dev, allow_tf32.load());
  auto found = cache.find(full, addrs);
  cudaGraphExec_t* exec = found.first;
  const GpuContext ctx = context(dev, reinterpret_cast<std::uintptr_t>(d.stream), blas_work, blas_bytes);
  if (found.second == Cache::Found::kNone) {
    exec = &cache.add(std::move(full), addrs, instantiate(capture(d.stream, ctx, fn)), destroy_exec);
  } else if (found.second == Cache::Found::kUpdate) {
    cudaGraph_t graph = capture(d.stream, ctx, fn);
    cudaGraphExecUpdateResultInfo info{};
    if (cudaGraphExecUpdate(*exec, graph, &info) == cudaSuccess) {
      cudaGraphDestroy(graph);
      cache.updated(addrs);
    } else {  // a topology the executable cannot take: a new one in its place
      cudaGetLastError();
      exec = &cache.replace(addrs, instantiate(graph), destroy_exec);
    }
  }
  check_cuda(cudaEventRecord(d.in, caller), "cudaEventRecord");
  check_cuda(cudaStreamWaitEvent(d.stream, d.in, 0), "cudaStreamWaitEvent");
  check_cuda(cudaGraphLaunch(*exec, d.stream), "cudaGraphLaunch");
  check_cuda(cudaEventRecord(d.out, d.stream), "cudaEventRecord");
  check_cuda(cudaStreamWaitEvent(caller, d.out, 0), "cudaStreamWaitEvent");
}

std::vector<std::int64_t> graph_stats() { return thread_graphs.cache.stats(); }

void clear_graphs() { thread_graphs.cache.clear(destroy_exec); }

std::vector<std::int64_t> resource_counts() {
  return {created_handles.load(), created_streams.load(), created_events.load()};
}

void emu_set_compute_capability(int) {
  throw std::logic_error("_set_compute_capability is a hook of the emulation build");
}

void set_allow_tf32(bool on) { allow_tf32.store(on); }
bool get_allow_tf32() { return allow_tf32.load(); }

}  // namespace gpu

// Row-major C (M x N) = alpha op(A) op(B) + beta C through column-major cuBLAS: the row-major C
// is C^T in column-major order, and C^T = op(B)^T op(A)^T, so the operands swap places.
void gpu_gemm(const GpuContext& ctx, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
              float alpha, const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
              float* C, int64_t ldc) {
  check_cublas(cublasSgemm(static_cast<cublasHandle_t>(ctx.blas_handle), tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                           ta ? CUBLAS_OP_T : CUBLAS_OP_N, int(N), int(M), int(K), &alpha, B,
                           int(ldb), A, int(lda), &beta, C, int(ldc)),
               "cublasSgemm");
}

// bfloat16 operands, float32 C and accumulation (tensor cores): the same operand swap.
void gpu_gemm_bf16(const GpuContext& ctx, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
                   float alpha, const uint16_t* A, int64_t lda, const uint16_t* B, int64_t ldb,
                   float beta, float* C, int64_t ldc) {
  check_cublas(cublasGemmEx(static_cast<cublasHandle_t>(ctx.blas_handle), tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                            ta ? CUBLAS_OP_T : CUBLAS_OP_N, int(N), int(M), int(K), &alpha, B, CUDA_R_16BF,
                            int(ldb), A, CUDA_R_16BF, int(lda), &beta, C, CUDA_R_32F, int(ldc),
                            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
               "cublasGemmEx");
}

void gpu_gemm(const GpuContext& ctx, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
              double alpha, const double* A, int64_t lda, const double* B, int64_t ldb,
              double beta, double* C, int64_t ldc) {
  check_cublas(cublasDgemm(static_cast<cublasHandle_t>(ctx.blas_handle), tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                           ta ? CUBLAS_OP_T : CUBLAS_OP_N, int(N), int(M), int(K), &alpha, B,
                           int(ldb), A, int(lda), &beta, C, int(ldc)),
               "cublasDgemm");
}

}  // namespace pylstm
