// What the CUDA bindings (bind/cuda.cpp) need from the device runtime, implemented twice:
// cuda/glue.cpp (the real CUDA runtime and cuBLAS, for pylstm._cuda) and cuda/emu.cpp (host
// memory stands for device 0, for pylstm._cuda_emu). Errors are C++ exceptions that pybind11
// turns into Python ones: std::invalid_argument -> ValueError, std::runtime_error ->
// RuntimeError; messages name the argument.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <utility>
#include <string>
#include <vector>

#include "cuda/api.h"

namespace pylstm {
namespace gpu {

// Number of visible GPUs; 0 when none, with the reason in *why (the CUDA error, e.g. no driver).
int device_count(std::string* why);

// The device holding the memory at p (device or managed memory). Raises std::invalid_argument
// naming `name` for host memory, and std::runtime_error when no GPU is usable (the CUDA error
// is cleared first, so nothing sticks to the next call).
int pointer_device(const void* p, const char* name);

// Makes dev current for the guard's lifetime, then restores the thread's previous CUDA context
// exactly, none included: "restoring" device 0 with cudaSetDevice on a thread that had no
// context would create a primary context (hundreds of MB) on GPU 0 for a call on GPU 1.
class DeviceGuard {
 public:
  explicit DeviceGuard(int dev);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = -1;
  void* prev_ctx_ = nullptr;  // the driver's CUcontext, when the driver entry points were found
  bool have_ctx_ = false;
};

// The context for a call on `stream` of the current device: the cuBLAS handle cached for this
// host thread and device (created on first use), bound to the stream and, when `blas_work` is
// given, to that workspace (cublasSetStream resets the handle's workspace, so it is set again
// on every call). Without one, cuBLAS allocates its own: since CUDA 12.2 with cudaMallocAsync,
// outside the caller's memory pool, and as graph memory nodes inside a capture.
GpuContext context(int dev, std::uintptr_t stream, void* blas_work = nullptr, std::size_t blas_bytes = 0);

// Device dev's compute capability as 10 * major + minor (cached; the emulation: 90, or what
// emu_set_compute_capability set).
int compute_capability(int dev);
void emu_set_compute_capability(int cc);

// The cuBLAS workspace a call on device dev should be given: 32 MiB on Hopper and later (what
// cuBLAS asks for there), 4 MiB before; 0 in the emulation (no cuBLAS).
std::int64_t cublas_workspace_bytes(int dev);

// Blocks for one clipping launch to fill device dev: as many kClipThreads-thread blocks as its
// multiprocessors hold at once, times two (for the uneven tail); cached per device.
int64_t clip_target_blocks(int dev);

// Makes `consumer` (the stream the kernels run on) wait for the work already queued on each
// producer stream (the `stream` entries of the arrays' __cuda_array_interface__, version 3),
// without blocking the host: an event recorded on the producer, waited on by the consumer.
// Handles as the interface gives them: 1 = the legacy default stream (also 0 as a consumer),
// 2 = the per-thread default stream, else a cudaStream_t. Streams equal to the consumer are
// skipped. Call with the arrays' device current.
void wait_for_producers(const std::vector<std::uintptr_t>& producers, std::uintptr_t consumer);

// The capture state of a stream handle as the interface gives it (see wait_for_producers).
// kLegacyBlocked: the legacy default stream while a blocking stream of the device captures a
// graph (any use of it would invalidate that capture: cudaErrorStreamCaptureImplicit).
enum class Capture { kNone, kActive, kLegacyBlocked };
Capture capture_state(std::uintptr_t stream);
// Emulation only (tests): capture_state reports `state` (a Capture) for `stream` from now on;
// the real runtime raises std::logic_error.
void emu_set_capture_state(std::uintptr_t stream, int state);

// CUDA graphs for the LSTM calls (off by default). With them on, run_maybe_graphed runs `fn`'s
// work (an LSTM forward or backward: one or two launches per step) as a CUDA graph: `shape`
// holds everything the graph's topology depends on (call, cell, dtype, sizes, which optional
// arrays are present), `addrs` every array's address. The first call of a shape captures and
// instantiates; a call on cached addresses replays with one cudaGraphLaunch; a call on new
// addresses of a shape that already has GraphCache::kPerShape graphs re-captures (cheap: the
// launches are recorded, not run) and updates the least recently used executable in place
// (cudaGraphExecUpdate; instantiated anew only if the update is refused). Replays run on a
// private stream of this thread and device, joined to the caller's stream by events both ways
// (the legacy default stream cannot be captured). When the caller's stream is itself being
// captured, or graphs are off, fn runs directly on the caller's stream. Per host thread, the
// GraphCache::kMaxGraphs most recently used executables are kept.
void set_use_graphs(bool on);
bool get_use_graphs();
void run_maybe_graphed(int dev, std::uintptr_t stream, const std::vector<std::uint64_t>& shape,
                       const std::vector<std::uint64_t>& addrs,
                       const std::function<void(const GpuContext&)>& fn, void* blas_work = nullptr,
                       std::size_t blas_bytes = 0);
// This thread's graph cache: (replays, captures, updates); clear_graphs empties it.
std::vector<std::int64_t> graph_stats();
void clear_graphs();

// How many cuBLAS handles, graph streams and synchronization events this process has created
// (each kept per host thread and device, handed to a pool when the thread exits).
std::vector<std::int64_t> resource_counts();

// TF32 tensor-core math for float32 GEMMs (off by default: strict fp32).
void set_allow_tf32(bool on);
bool get_allow_tf32();

}  // namespace gpu
}  // namespace pylstm
