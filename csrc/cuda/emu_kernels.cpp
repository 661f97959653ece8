// The emulation build of the CUDA kernels: cuda/kernels.cu compiled as host C++ (cuda/emu.h).
// A separate file so that the .cu source keeps LANGUAGE CUDA in the same CMake directory.
#include "cuda/kernels.cu"  // NOLINT(bugprone-suspicious-include)
