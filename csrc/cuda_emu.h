// The few CUDA names pylstm's .cu sources use, for two builds of the same source:
//  - under nvcc: the real ones, and PYLSTM_LAUNCH is a <<<grid, block, 0, stream>>> launch;
//  - under a host C++ compiler (the emulation build, tested on every commit without a GPU):
//    dim3, thread-local threadIdx/blockIdx/blockDim/gridDim, empty qualifiers, and
//    PYLSTM_LAUNCH runs the kernel body once per (block, thread), sequentially.
// Kernels written for both therefore never use __syncthreads or shared memory; each thread's
// work is independent within a launch (see lstm_cuda.cu).
#pragma once

#if defined(__CUDACC__)

#include <cuda_runtime.h>

#define PYLSTM_LAUNCH(kernel, grid, block, stream, ...) \
  kernel<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__)

#else

#include <cstdint>

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace pylstm_emu {
inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;
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

#define PYLSTM_LAUNCH(kernel, grid, block, stream, ...)                                \
  do {                                                                                 \
    (void)(stream);                                                                    \
    const dim3 g_{grid}, b_{block};                                                    \
    pylstm_emu::gridDim = g_;                                                          \
    pylstm_emu::blockDim = b_;                                                         \
    for (unsigned bz_ = 0; bz_ < g_.z; ++bz_)                                          \
      for (unsigned by_ = 0; by_ < g_.y; ++by_)                                        \
        for (unsigned bx_ = 0; bx_ < g_.x; ++bx_) {                                    \
          pylstm_emu::blockIdx = dim3(bx_, by_, bz_);                                  \
          for (unsigned tz_ = 0; tz_ < b_.z; ++tz_)                                    \
            for (unsigned ty_ = 0; ty_ < b_.y; ++ty_)                                  \
              for (unsigned tx_ = 0; tx_ < b_.x; ++tx_) {                              \
                pylstm_emu::threadIdx = dim3(tx_, ty_, tz_);                           \
                kernel(__VA_ARGS__);                                                   \
              }                                                                        \
        }                                                                              \
  } while (0)

#endif
