// The GPU sequence kernels' API (cuda/kernels.cu), the CUDA counterpart of cpu/api.h. Pointers are
// device memory in the CUDA build and host memory in the emulation build (cuda/emu.h).
#pragma once

#include <cstdint>
#include <vector>

#include "cuda/emu.h"
#include "common/seq_args.h"

namespace pylstm {

struct Bf16Gemms;

// Where a call runs: the caller's stream and the cuBLAS handle cached for its device (unused in
// the emulation build); bf16, set by the drivers for a bfloat16 call (cuda/kernels.cu).
struct GpuContext {
  cudaStream_t stream = nullptr;
  void* blas_handle = nullptr;
  const Bf16Gemms* bf16 = nullptr;
};

// The bfloat16 GEMMs' scratch (ForwardArgs::bf16 / BackwardArgs::bf16, float32 calls): after the
// driver's own workspace (seq_*_workspace_size), from the next 256-byte boundary, bfloat16
// values: the call's weights converted once (Wx, D x G; Wh, H x G), then one GEMM's first
// operand (at most R x max(S*H, D + H), R = N*T) and second (at most R x S*H), each converted as
// its GEMM is issued; every region 256-byte aligned. Offsets and the total in bfloat16 values.
struct Bf16Layout {
  int64_t wx, wh, a, b, total;
};
template <class Cell>
Bf16Layout bf16_layout(const SeqShape& s) {
  const int64_t G = Cell::kGates * s.H, S = CellCall<Cell>::kS * s.H, R = s.N * s.T;
  const int64_t DH = s.D + s.H, widest = S > DH ? S : DH;
  auto up = [](int64_t n) { return (n + 127) / 128 * 128; };
  Bf16Layout l;
  l.wx = 0;
  l.wh = up(s.D * G);
  l.a = l.wh + up(s.H * G);
  l.b = l.a + up(R * widest);
  l.total = l.b + up(R * S);
  return l;
}
// Elements of 4 bytes the scratch adds to a workspace (with room for the alignment).
template <class Cell>
int64_t seq_bf16_workspace_size(const SeqShape& s) {
  return (bf16_layout<Cell>(s).total + 1) / 2 + 64;
}

// The recurrent driver for cell C (cells/registry.h): arguments as for seq_forward_cpu /
// seq_backward_cpu (cpu/api.h; work_size is not read: the workspace must have
// seq_forward_workspace_size / seq_backward_workspace_size elements), plus the context.
template <class Cell, class T>
void seq_forward_cuda(const GpuContext& ctx, const ForwardArgs<T>& a);
template <class Cell, class T>
void seq_backward_cuda(const GpuContext& ctx, const BackwardArgs<T>& a);

// Clipping (cuda/kernels.cu). The arrays are cut into chunks, each one block's work; the chunk
// table travels by value as a kernel parameter (at most kClipMaxChunks entries, under the 4 KB
// parameter limit), so nothing is copied to the device and the host never waits.
constexpr unsigned kClipThreads = 512;
constexpr int kClipMaxChunks = 250;
constexpr int64_t kClipMinChunk = 1 << 14;
template <class T>
struct ClipChunk {
  T* data;
  int64_t size;
};
template <class T>
struct ClipTable {
  int64_t count;        // chunks in this launch
  int64_t first_block;  // index of chunk[0] in the whole list (its partial's slot)
  ClipChunk<T> chunk[kClipMaxChunks];
};

// Cuts arrays (device pointers, element counts) into chunks of one size, chosen from the total
// element count alone so that the list makes about `target_blocks` chunks (the blocks the device
// runs at once, times two: gpu::clip_target_blocks; at most kClipMaxChunks, one launch's table)
// and never fewer than kClipMinChunk elements
// each: how many chunks an array gets depends on its size and the total, not on how many other
// arrays share the list (one chunk per array would leave a 10^8-element array among 300 small
// ones to a single block). Tables of more than kClipMaxChunks chunks take several launches.
template <class T>
std::vector<ClipChunk<T>> plan_clip_chunks(const std::vector<Span<T>>& arrays, int64_t target_blocks) {
  int64_t total = 0;
  for (const auto& a : arrays) total += a.size;
  // (at most one launch's table for the whole list when the arrays are few)
  const int64_t target = target_blocks < 1 ? 1 : target_blocks > kClipMaxChunks ? kClipMaxChunks : target_blocks;
  int64_t chunk = (total + target - 1) / target;
  chunk = chunk < kClipMinChunk ? kClipMinChunk : (chunk + 1023) / 1024 * 1024;
  std::vector<ClipChunk<T>> out;
  for (const auto& a : arrays)
    for (int64_t off = 0; off < a.size; off += chunk)
      out.push_back({a.data + off, a.size - off < chunk ? a.size - off : chunk});
  return out;
}

// Global norm of every element of every chunk, accumulated in double in a fixed order (no float
// atomics): launch 1 writes one partial per chunk (block tree reduction) and its last block to
// finish (an integer counter) adds the partials in order and decides the rate; launch 2 scales
// every chunk in place when max_norm > 0, the norm is finite and above max_norm (rate =
// max_norm / (norm + 1e-6)); max_norm <= 0 only measures. Lists of more than kClipMaxChunks
// chunks take ceil(n / kClipMaxChunks) launches of each kind.
//   chunks    host memory, nchunks entries (plan_clip_chunks)
//   partials  (nchunks,) doubles, device scratch
//   counter   one unsigned, device memory, 0 on entry and left 0
//   out       (3,) doubles, device memory: [norm, rate applied (1 when none), 1 if finite else 0]
// Never syncs the host.
template <class T>
void clip_grads_cuda(const GpuContext& ctx, const ClipChunk<T>* chunks, int64_t nchunks,
                     double max_norm, double* partials, unsigned* counter, double* out);

// Clipping by value over the same chunk table: every element clamped to [-limit, limit] in
// place, one launch per kClipMaxChunks chunks; NaN stays NaN.
template <class T>
void clip_value_cuda(const GpuContext& ctx, const ClipChunk<T>* chunks, int64_t nchunks, double limit);

#if defined(__CUDACC__) || defined(PYLSTM_REAL_CUDA)
// Raises std::runtime_error naming the kernel when its launch failed (cuda/glue.cpp).
void check_launch(const char* kernel);
// Row-major GEMM through cuBLAS on ctx's stream (defined with the CUDA module's cuBLAS glue).
void gpu_gemm(const GpuContext& ctx, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
              float alpha, const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
              float* C, int64_t ldc);
void gpu_gemm(const GpuContext& ctx, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
              double alpha, const double* A, int64_t lda, const double* B, int64_t ldb,
              double beta, double* C, int64_t ldc);
// The same with bfloat16 A and B (raw bits) and float32 C and accumulation (cublasGemmEx).
void gpu_gemm_bf16(const GpuContext& ctx, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
                   float alpha, const uint16_t* A, int64_t lda, const uint16_t* B, int64_t ldb,
                   float beta, float* C, int64_t ldc);
#endif

}  // namespace pylstm
