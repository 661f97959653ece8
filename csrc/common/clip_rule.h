// Global-norm clipping's rule (DLfS2): the scale applied when the norm exceeds max_norm. One
// place for the CPU path (bind/cpu.cpp) and the CUDA kernel (cuda/kernels.cu).
#pragma once

#include "common/hd.h"

namespace pylstm {

// rate = max_norm / (norm + 1e-6); the arrays are scaled by it only when it is below 1.
PYLSTM_HD double clip_rate(double norm, double max_norm) { return max_norm / (norm + 1e-6); }

}  // namespace pylstm
