// PYLSTM_HD marks a function shared by the CPU loops and the CUDA kernels: __host__ __device__
// under nvcc; on the host always inlined, since the CPU loops vectorize only once the cell math
// is inlined into them (GCC's size limits otherwise leave calls, and scalar loops, behind).
#pragma once

#if defined(__CUDACC__)
#define PYLSTM_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define PYLSTM_HD __attribute__((always_inline)) inline
#else
#define PYLSTM_HD inline
#endif
