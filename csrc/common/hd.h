// PYLSTM_HD marks a function shared by the CPU loops and the CUDA kernels: __host__ __device__
// under nvcc, plain inline otherwise.
#pragma once

#if defined(__CUDACC__)
#define PYLSTM_HD __host__ __device__ __forceinline__
#else
#define PYLSTM_HD inline
#endif
