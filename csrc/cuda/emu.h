// The few CUDA names pylstm's .cu sources use, for two builds of the same source:
//  - under nvcc: the real ones; PYLSTM_LAUNCH and PYLSTM_LAUNCH_SYNC are <<<grid, block, 0,
//    stream>>> launches followed by a launch-error check (pylstm::check_launch, cuda/api.h);
//  - under a host C++ compiler (the emulation build, tested on every commit without a GPU):
//    dim3, thread-local threadIdx/blockIdx/blockDim/gridDim, empty qualifiers, and
//      PYLSTM_LAUNCH       runs the kernel body once per (block, thread), sequentially: for
//                          kernels whose threads are independent (no barrier, no __shared__);
//      PYLSTM_LAUNCH_SYNC  runs the threads of each block as cooperative fibers (ucontext), so
//                          __syncthreads() really is a barrier and __shared__ memory is shared
//                          by the block: for the block reductions. A barrier reached by some
//                          threads of a block while others have returned is reported as an
//                          error (undefined behaviour on a GPU).
//    __syncthreads() inside a PYLSTM_LAUNCH kernel is an error in the emulation too.
//    The launch bodies capture the kernel's arguments by value, so that a launch recorded into
//    an emulated graph can run later.
#pragma once

#if defined(__CUDACC__) || defined(PYLSTM_REAL_CUDA)
// PYLSTM_REAL_CUDA: host C++ files of the real CUDA module (bindings, cuBLAS glue).

#include <cuda_runtime.h>

#define PYLSTM_LAUNCH(kernel, grid, block, stream, ...)            \
  do {                                                             \
    kernel<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__);         \
    ::pylstm::check_launch(#kernel);                               \
  } while (0)
#define PYLSTM_LAUNCH_SYNC PYLSTM_LAUNCH

#else

#include <cstdint>
#include <functional>

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace pylstm_emu {
inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

// Runs body once per thread of every block of the grid; block threads as fibers when `fibers`
// (cuda/emu.cpp). Throws std::logic_error on a misused barrier. While this thread records a
// graph (gpu::run_maybe_graphed), the launch is recorded instead, to run at each replay.
void launch(const dim3& grid, const dim3& block, bool fibers, const std::function<void()>& body);
// Stream-ordered host work that is not a kernel (the emulated cuBLAS GEMMs): runs now, or is
// recorded like a launch while a graph is being recorded.
void enqueue(const std::function<void()>& work);
void syncthreads();  // the barrier of a fiber launch

// Atomics and fences: the emulation runs one thread at a time.
template <class T>
inline T atomic_add(T* p, T v) {
  const T old = *p;
  *p = old + v;
  return old;
}
}  // namespace pylstm_emu
using pylstm_emu::blockDim;
using pylstm_emu::blockIdx;
using pylstm_emu::gridDim;
using pylstm_emu::threadIdx;

using cudaStream_t = void*;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
// One copy per OS thread: the fibers of a block (one OS thread) share it, as a block does.
#define __shared__ static thread_local
#define __syncthreads() ::pylstm_emu::syncthreads()
#define __threadfence() ((void)0)
#define atomicAdd(p, v) ::pylstm_emu::atomic_add((p), (v))

#define PYLSTM_LAUNCH(kernel, grid, block, stream, ...)                                   \
  do {                                                                                    \
    (void)(stream);                                                                       \
    ::pylstm_emu::launch(dim3(grid), dim3(block), false, [=] { kernel(__VA_ARGS__); });   \
  } while (0)
#define PYLSTM_LAUNCH_SYNC(kernel, grid, block, stream, ...)                              \
  do {                                                                                    \
    (void)(stream);                                                                       \
    ::pylstm_emu::launch(dim3(grid), dim3(block), true, [=] { kernel(__VA_ARGS__); });    \
  } while (0)

#endif
