// The emulation build of the CUDA kernels: lstm_cuda.cu compiled as host C++ (cuda_emu.h).
// A separate file so that the .cu source keeps LANGUAGE CUDA in the same CMake directory.
#include "lstm_cuda.cu"  // NOLINT(bugprone-suspicious-include)
