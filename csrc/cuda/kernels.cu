// The recurrent sequence driver (every cell of cells/) and global-norm clipping for the GPU, written once for two
// builds: nvcc (the CUDA module; GEMMs through cuBLAS) and the emulation build, which compiles
// this file as host C++ against cuda/emu.h (GEMMs through CPU BLAS) so that every commit runs
// it against the NumPy reference without a GPU. Structure as the CPU driver (ARCHITECTURE.md): one input-projection
// GEMM, per step one recurrent GEMM and one pointwise launch; backward one pointwise launch and
// one GEMM per step, then dX and the merged [dWx; dWh] GEMMs and db as a per-column sum.
// The functions run on the caller's stream, allocate nothing (the caller passes outputs and
// scratch) and never synchronize the host. The LSTM kernels' threads are independent within a
// launch (PYLSTM_LAUNCH); the clipping reduction uses block barriers and shared memory
// (PYLSTM_LAUNCH_SYNC, which the emulation runs as fibers: see cuda/emu.h).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "cuda/emu.h"
#include "cells/registry.h"
#include "common/bf16.h"
#include "common/clip_rule.h"
#include "cuda/api.h"

#if !defined(__CUDACC__)
#include "cpu/blas.h"
using std::sqrt;
#endif

namespace pylstm {

namespace {

constexpr unsigned kBlock = 256;

inline unsigned blocks_for(int64_t n) { return unsigned((n + kBlock - 1) / kBlock); }

}  // namespace

// A bfloat16 call's GEMMs (precision="bf16", float32 only; ForwardArgs::bf16): every operand
// rounded to bfloat16 (common/bf16.h) as it is converted for cuBLAS (cublasGemmEx, float32
// sums), into the scratch of bf16_layout (cuda/api.h): the call's weights once, before its
// first GEMM, any other operand as its GEMM is issued (stream order keeps one GEMM's scratch
// from the next). The emulation build converts the same way, then multiplies the rounded values
// with CPU sgemm: the products are exact in float32, the sums float32, as on the tensor cores.
struct Bf16Gemms {
  const float* w[2] = {nullptr, nullptr};        // Wx, Wh as given
  const uint16_t* w16[2] = {nullptr, nullptr};   // their converted copies, the same layout
  int64_t wn[2] = {0, 0};                        // their element counts
  uint16_t* a16 = nullptr;                       // one GEMM's first operand
  uint16_t* b16 = nullptr;                       // and its second
};

namespace {

// One thread per element: dst (rows x cols, ldd) = src (rows x cols, ld) rounded to bfloat16.
__global__ void to_bf16_kernel(int64_t rows, int64_t cols, const float* src, int64_t ld, uint16_t* dst,
                               int64_t ldd) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= rows * cols) return;
  const int64_t r = idx / cols, c = idx % cols;
  dst[r * ldd + c] = bf16_round(src[r * ld + c]);
}

// The bfloat16 form of a stored operand (rows x cols at ld): inside the call's weights, their
// converted copy at the same offset (ld kept); else converted into dst (ld = cols).
const uint16_t* bf16_operand(const GpuContext& ctx, const float* p, int64_t rows, int64_t cols, int64_t ld,
                             uint16_t* dst, int64_t& ld16) {
  const Bf16Gemms& bf = *ctx.bf16;
  const auto at = reinterpret_cast<uintptr_t>(p);
  for (int i = 0; i < 2; ++i) {
    const auto w = reinterpret_cast<uintptr_t>(bf.w[i]);
    if (bf.w[i] && at >= w && at < w + uintptr_t(bf.wn[i]) * sizeof(float)) {
      ld16 = ld;
      return bf.w16[i] + (p - bf.w[i]);
    }
  }
  PYLSTM_LAUNCH(to_bf16_kernel, blocks_for(rows * cols), kBlock, ctx.stream, rows, cols, p, ld, dst, cols);
  ld16 = cols;
  return dst;
}

void dev_gemm_bf16(const GpuContext& ctx, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                   const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  int64_t la = 0, lb = 0;
  const int64_t ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
  const uint16_t* a16 = bf16_operand(ctx, A, ar, ac, lda, ctx.bf16->a16, la);
  const uint16_t* b16 = bf16_operand(ctx, B, br, bc, ldb, ctx.bf16->b16, lb);
#if defined(__CUDACC__)
  gpu_gemm_bf16(ctx, ta, tb, M, N, K, alpha, a16, la, b16, lb, beta, C, ldc);
#else
  pylstm_emu::enqueue([=] {  // (the stored values as float32: only what the operands span)
    auto widen = [](const uint16_t* h, int64_t rows, int64_t cols, int64_t ld) {
      std::vector<float> f(size_t(rows > 0 ? (rows - 1) * ld + cols : 0));
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) f[size_t(r * ld + c)] = bf16_to_float(h[r * ld + c]);
      return f;
    };
    const std::vector<float> af = widen(a16, ar, ac, la), bfv = widen(b16, br, bc, lb);
    gemm(ta, tb, int(M), int(N), int(K), alpha, af.data(), int(la), bfv.data(), int(lb), beta, C, int(ldc));
  });
#endif
}

// Row-major C = alpha op(A) op(B) + beta C on the context's stream (in bfloat16 for a bfloat16
// call's float32 GEMMs).
template <class T>
void dev_gemm(const GpuContext& ctx, bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha,
              const T* A, int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if constexpr (std::is_same<T, float>::value) {
    if (ctx.bf16) {
      dev_gemm_bf16(ctx, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
      return;
    }
  }
#if defined(__CUDACC__)
  gpu_gemm(ctx, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);  // cuBLAS (cuda/api.h)
#else
  (void)ctx;
  pylstm_emu::enqueue([=] {
    gemm(ta, tb, int(M), int(N), int(K), alpha, A, int(lda), B, int(ldb), beta, C, int(ldc));
  });
#endif
}

// The cell's per-unit parameters of unit j (P rows of H; none for most cells).
template <class Cell, class T>
__device__ inline void load_unit_params(const T* P, int64_t H, int64_t j,
                                        T (&pv)[CellCall<Cell>::kP]) {
  for (int k = 0; k < CellCall<Cell>::kP; ++k) pv[k] = k < Cell::kUnitParams ? P[k * H + j] : T(0);
}

// The walk's h_{t-1} of unit j of row n at step t, from hs (N, T, H): h0's row (or zero) at
// the sequence's first step.
template <class T>
__device__ inline T walk_h_prev(const SeqWalk& w, int64_t n, int64_t t, int64_t j, int64_t H,
                                const T* hs, const T* h0) {
  if (w.first(n, t)) return h0 ? h0[n * H + j] : T(0);
  return hs[(n * w.T + w.prev(t)) * H + j];
}

// One thread per (n, j): the cell's forward for step t (activations, c and h). A_t rows of
// kS blocks at stride T*kS*H: the shared blocks' x-part + h-part, the split blocks' x-part,
// then (in the spare blocks) the split blocks' h-part when have_h. h_{t-1} (read by cells
// with split blocks) comes from hs or h0 (walk_h_prev); c_prev / c_out are null for a cell
// without a cell state. A row runs only where the walk has it (step t); at its first step its
// c_prev is c_first's row (zeros when null; c_first is c0, or the running c).
template <class Cell, class T>
__global__ void seq_fwd_pointwise_kernel(int64_t N, int64_t H, int64_t Tn, T* A_t, const T* b,
                                         const T* hs, bool have_h,
                                         const T* c_prev, int64_t cp_ld, T* c_out, int64_t c_ld,
                                         T* h_out, bool save, const T* P, SeqWalk w, int64_t t,
                                         const T* h0, const T* c_first) {
  using Call = CellCall<Cell>;
  constexpr int kG = Call::kG, kShared = kG - Call::kSplit;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= N * H) return;
  const int64_t n = idx / H, j = idx % H;
  if (!w.active(n, t)) return;
  const bool first = w.first(n, t);
  T* a = A_t + n * Tn * Call::kS * H;
  T pre[kG], hsplit[Call::kSp] = {}, act[Call::kS], c, h, pv[Call::kP];
  for (int k = 0; k < kG; ++k) pre[k] = a[k * H + j] + b[k * H + j];
  for (int k = kShared; k < kG; ++k) hsplit[k - kShared] = have_h ? a[(k + Call::kSplit) * H + j] : T(0);
  load_unit_params<Cell>(P, H, j, pv);
  T hp = T(0), cp = T(0);
  if (Call::kSplit > 0) hp = walk_h_prev(w, n, t, j, H, hs, h0);
  if (c_prev) cp = first ? (c_first ? c_first[n * H + j] : T(0)) : c_prev[n * cp_ld + j];
  Call::forward(pre, hsplit, hp, cp, pv, act, c, h);
  if (save) {
    for (int k = 0; k < Call::kS; ++k) a[k * H + j] = act[k];
  }
  if (c_out) c_out[n * c_ld + j] = c;
  h_out[n * Tn * H + j] = h;
}

// One thread per (n, j): the cell's backward, dA_t (and dc_{t-1}) from dh_t = dhs[:, t] +
// carried dh; for a cell with a direct dh path, its part of dh_{t-1} replaces the carried dh
// (the recurrent GEMM adds onto it). cs, c0, dc_carry are null for a cell without a cell state.
// With lengths (dh_accumulate), the carried dh it consumed is zeroed (the GEMM then adds onto
// it) and a row the walk does not have at t is left alone: its dA row was zeroed beforehand.
template <class Cell, class T>
__global__ void seq_bwd_pointwise_kernel(int64_t N, int64_t H, int64_t Tn, int64_t t,
                                         const T* gates, const T* cs, const T* c0, const T* hs,
                                         const T* h0, const T* dhs, T* dh_carry, T* dc_carry,
                                         T* dA, const T* P, SeqWalk w, bool dh_accumulate) {
  using Call = CellCall<Cell>;
  constexpr int kS = Call::kS;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= N * H) return;
  const int64_t n = idx / H, j = idx % H, row = n * Tn + t, GS = kS * H;
  if (!w.active(n, t)) return;
  const bool first = w.first(n, t);
  const T* gt = gates + row * GS;
  T act[kS], da[kS], dcp, dhd, pv[Call::kP];
  for (int k = 0; k < kS; ++k) act[k] = gt[k * H + j];
  load_unit_params<Cell>(P, H, j, pv);
  T hp = T(0);
  if (Call::kSplit > 0) hp = walk_h_prev(w, n, t, j, H, hs, h0);
  T c = T(0), cp = T(0), dc = T(0);
  if (cs) {
    c = cs[row * H + j];
    cp = first ? (c0 ? c0[n * H + j] : T(0)) : cs[(n * Tn + w.prev(t)) * H + j];
    dc = dc_carry[n * H + j];
  }
  Call::backward(act, c, cp, hp, pv, dhs[row * H + j] + dh_carry[n * H + j], dc, da, dcp, dhd);
  T* d = dA + row * GS;
  for (int k = 0; k < kS; ++k) d[k * H + j] = da[k];
  if (cs) dc_carry[n * H + j] = dcp;
  if (Call::kDirectH || dh_accumulate) dh_carry[n * H + j] = dhd;  // (0 without a direct path)
}

// A gated cell's (cells/gru.h, GruBeforeCell) phases, one thread per (n, j). Forward phase 1:
// z, r from A_t's blocks 0, 1 (+ b), written back there as activations; rh = r * h_prev into
// RH (N, H). Phase 2: n from block 2 (+ b_n), which then holds n's activation; h. h_prev null:
// zeros (t = 0 without h0).

template <class Cell, class T>
__global__ void gated_fwd_gate_kernel(int64_t N, int64_t H, int64_t Tn, T* A_t, const T* b,
                                      const T* hs, T* RH, SeqWalk w, int64_t t, const T* h0) {
  if constexpr (CellCall<Cell>::kGated > 0) {
    const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (idx >= N * H) return;
    const int64_t n = idx / H, j = idx % H;
    if (!w.active(n, t)) return;
    T* a = A_t + n * Tn * 3 * H;
    T pre[2] = {a[j] + b[j], a[H + j] + b[H + j]}, act[3], rh;
    Cell::forward_gate(pre, walk_h_prev(w, n, t, j, H, hs, h0), act, rh);
    a[j] = act[0];
    a[H + j] = act[1];
    RH[n * H + j] = rh;
  }
}

template <class Cell, class T>
__global__ void gated_fwd_out_kernel(int64_t N, int64_t H, int64_t Tn, T* A_t, const T* b,
                                     const T* hs, T* h_out, SeqWalk w, int64_t t, const T* h0) {
  if constexpr (CellCall<Cell>::kGated > 0) {
    const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (idx >= N * H) return;
    const int64_t n = idx / H, j = idx % H;
    if (!w.active(n, t)) return;
    T* a = A_t + n * Tn * 3 * H;
    T act[3] = {a[j], a[H + j], T(0)}, h;
    Cell::forward_out(a[2 * H + j] + b[2 * H + j], walk_h_prev(w, n, t, j, H, hs, h0), act, h);
    a[2 * H + j] = act[2];
    h_out[n * Tn * H + j] = h;
  }
}

// Unit j of row `row` (step t of sequence n): its saved z, r, n and h_{t-1}.
template <class T>
__device__ inline T gated_saved(const T* gates, const T* hs, const T* h0, int64_t H, int64_t n,
                                int64_t t, int64_t row, int64_t j, T (&act)[3], const SeqWalk& w) {
  const T* g = gates + row * 3 * H;
  for (int k = 0; k < 3; ++k) act[k] = g[k * H + j];
  (void)row;
  return walk_h_prev(w, n, t, j, H, hs, h0);
}

// Backward phase 1: dz, dn into dA_t's blocks 0 and 2, the direct part of dh_{t-1} into
// dh_carry; phase 2: dr into block 1 from drh (N, H), drh's part added to dh_carry.
template <class Cell, class T>
__global__ void gated_bwd_out_kernel(int64_t N, int64_t H, int64_t Tn, int64_t t, const T* gates,
                                     const T* hs, const T* h0, const T* dhs, T* dh_carry, T* dA,
                                     SeqWalk w) {
  if constexpr (CellCall<Cell>::kGated > 0) {
    const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (idx >= N * H) return;
    const int64_t n = idx / H, j = idx % H, row = n * Tn + t;
    if (!w.active(n, t)) return;
    T act[3];
    const T hp = gated_saved(gates, hs, h0, H, n, t, row, j, act, w);
    T d[3] = {}, direct;
    Cell::backward_out(act, hp, dhs[row * H + j] + dh_carry[n * H + j], d, direct);
    dA[row * 3 * H + j] = d[0];
    dA[row * 3 * H + 2 * H + j] = d[2];
    dh_carry[n * H + j] = direct;
  }
}

template <class Cell, class T>
__global__ void gated_bwd_gate_kernel(int64_t N, int64_t H, int64_t Tn, int64_t t, const T* gates,
                                      const T* hs, const T* h0, const T* drh, T* dh_carry, T* dA,
                                      SeqWalk w) {
  if constexpr (CellCall<Cell>::kGated > 0) {
    const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (idx >= N * H) return;
    const int64_t n = idx / H, j = idx % H, row = n * Tn + t;
    if (!w.active(n, t)) return;
    T act[3];
    const T hp = gated_saved(gates, hs, h0, H, n, t, row, j, act, w);
    T d[3] = {}, dgate;
    Cell::backward_gate(act, hp, drh[n * H + j], d, dgate);
    dA[row * 3 * H + H + j] = d[1];
    dh_carry[n * H + j] += dgate;
  }
}

// RH[r, j] = r_t * h_{t-1} for every row r = n*T + t (r: the saved block 1 of rows of 3H).
template <class T>
__global__ void gated_rows_kernel(int64_t R, int64_t Tn, int64_t H, const T* gates, const T* hs,
                                  const T* h0, T* RH, SeqWalk w) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= R * H) return;
  const int64_t r = idx / H, j = idx % H, n = r / Tn, t = r % Tn;
  if (!w.active(n, t)) {
    RH[idx] = T(0);
    return;
  }
  RH[idx] = gates[r * 3 * H + H + j] * walk_h_prev(w, n, t, j, H, hs, h0);
}

// dst[n, :] = src[n, :] for N rows of H (strided source), or zeros when src is null.
template <class T>
__global__ void copy_rows_kernel(int64_t N, int64_t H, const T* src, int64_t src_ld, T* dst) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= N * H) return;
  const int64_t n = idx / H, j = idx % H;
  dst[idx] = src ? src[n * src_ld + j] : T(0);
}

// XH[r] = [x_r | h_{t-1}] for every row r = n*T + t (one thread per element).
// Padding rows (not in the walk) are zeros, whatever xs holds there.
template <class T>
__global__ void build_xh_kernel(int64_t R, int64_t Tn, int64_t D, int64_t H, const T* xs,
                                const T* hs, const T* h0, T* XH, SeqWalk w) {
  const int64_t DH = D + H;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= R * DH) return;
  const int64_t r = idx / DH, k = idx % DH, n = r / Tn, t = r % Tn;
  T v = T(0);
  if (!w.active(n, t)) {
  } else if (k < D) {
    v = xs[r * D + k];
  } else {
    v = walk_h_prev(w, n, t, k - D, H, hs, h0);
  }
  XH[idx] = v;
}

// With lengths, before a forward walk: the padding's outputs zeroed (hs; cs when saving), and
// h0 where a reversed sequence that starts mid-walk has its h_{t+1} row, for the step's GEMM
// (stash; walk_unstash_kernel zeros it after the walk).
template <class T>
__global__ void walk_pad_kernel(int64_t N, int64_t Tn, int64_t H, SeqWalk w, T* hs, T* cs,
                                const T* h0, bool stash) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= N * Tn * H) return;
  const int64_t j = idx % H, r = idx / H, n = r / Tn, t = r % Tn;
  if (w.active(n, t)) return;
  hs[idx] = stash && t == w.length(n) && t < w.steps ? h0[n * H + j] : T(0);
  if (cs) cs[idx] = T(0);
}

template <class T>
__global__ void walk_unstash_kernel(int64_t N, int64_t Tn, int64_t H, SeqWalk w, T* hs) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= N * H) return;
  const int64_t n = idx / H, j = idx % H, t = w.length(n);
  if (t < w.steps) hs[(n * Tn + t) * H + j] = T(0);
}

// dst[n, :] = src[n, t_n, :], t_n each sequence's last step (hT, cT from hs, cs).
template <class T>
__global__ void walk_last_kernel(int64_t N, int64_t Tn, int64_t H, SeqWalk w, const T* src, T* dst) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= N * H) return;
  const int64_t n = idx / H, j = idx % H;
  dst[idx] = src[(n * Tn + w.last(n)) * H + j];
}

// With lengths, before a backward walk: the padding rows of dA (W columns each) zeroed; after
// it, those of dxs (D columns).
template <class T>
__global__ void walk_zero_padding_kernel(int64_t R, int64_t Tn, int64_t W, SeqWalk w, T* rows) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= R * W) return;
  const int64_t r = idx / W;
  if (!w.active(r / Tn, r % Tn)) rows[idx] = T(0);
}

// db[j] = sum over rows of dA[:, j], in double whatever T (a float sum over N*T rows drifts well
// past NumPy's pairwise sum), deterministic (no atomics; the order is fixed by the shape). One
// thread per column would leave a GPU nearly idle (G threads each reading N*T dependent rows:
// at (64,100,256,256) 1024 threads for 26 MB), so the rows are cut into P chunks of `rc`:
// grid (ceil(G / block), P), thread (j, p) sums chunk p of column j in order into out[p*G + j];
// a second launch adds the P partials of each column in order. With P == 1 the first launch
// writes db itself.
inline int64_t column_sum_rows(int64_t R) { return std::max<int64_t>(16, (R + 255) / 256); }

// dA rows have ld columns; column j >= split reads column j + shift (a split block's input
// side: cells/gru.h).
template <class T, class Out>
__global__ void column_partial_kernel(int64_t R, int64_t G, int64_t rc, const T* dA, int64_t ld,
                                      int64_t split, int64_t shift, Out* out) {
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= G) return;
  const int64_t r0 = int64_t(blockIdx.y) * rc, r1 = R - r0 < rc ? R : r0 + rc;
  const int64_t src = j < split ? j : j + shift;
  double acc = 0.0;
  for (int64_t r = r0; r < r1; ++r) acc += double(dA[r * ld + src]);
  out[int64_t(blockIdx.y) * G + j] = Out(acc);
}

// The per-unit parameters' gradient, the same two-launch scheme over the rows: thread (j, p)
// adds the cell's param_grads of unit j over row chunk p (from the saved activations, cell
// states and dA) into out[p*K*H + k*H + j], K = kUnitParams; column_finish_kernel adds the P
// partials. Only instantiated for a cell with unit parameters.
template <class Cell, class T, class Out>
__global__ void unit_param_partial_kernel(int64_t R, int64_t Tn, int64_t H, int64_t rc,
                                          const T* gates, const T* cs, const T* c0, const T* dA,
                                          Out* out, SeqWalk w) {
  constexpr int kS = CellCall<Cell>::kS, kK = Cell::kUnitParams;
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= H) return;
  const int64_t r0 = int64_t(blockIdx.y) * rc, r1 = R - r0 < rc ? R : r0 + rc;
  double acc[kK] = {};
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / Tn, t = r % Tn;
    if (!w.active(n, t)) continue;  // (the padding's saved activations are not written)
    T act[kS], da[kS], dp[kK];
    for (int k = 0; k < kS; ++k) {
      act[k] = gates[r * kS * H + k * H + j];
      da[k] = dA[r * kS * H + k * H + j];
    }
    T c = T(0), cp = T(0);
    if (cs) {
      c = cs[r * H + j];
      cp = w.first(n, t) ? (c0 ? c0[n * H + j] : T(0)) : cs[(n * Tn + w.prev(t)) * H + j];
    }
    Cell::param_grads(act, c, cp, da, dp);
    for (int k = 0; k < kK; ++k) acc[k] += double(dp[k]);
  }
  for (int k = 0; k < kK; ++k) out[int64_t(blockIdx.y) * kK * H + k * H + j] = Out(acc[k]);
}

template <class T>
__global__ void column_finish_kernel(int64_t P, int64_t G, const double* partials, T* db) {
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= G) return;
  double acc = 0.0;
  for (int64_t p = 0; p < P; ++p) acc += partials[p * G + j];
  db[j] = T(acc);
}

// Rows per weight-gradient GEMM (seq_backward_cuda): [dWx; dWh] sums over all N*T rows, and
// one GEMM's sequential sum over them has a float32 error growing with N*T, where NumPy's
// per-step products sum N rows and then T steps. So the GEMM runs in row chunks accumulating
// into dW (beta = 1): chunks of at least 128 rows, at most 16 GEMMs. In float64 the one GEMM's
// error (~R ulp) is far inside the 1e-9 target: one launch, and cuBLAS free to split K itself.
template <class T>
int64_t weight_grad_chunk(int64_t R) {
  if (sizeof(T) == 8) return R > 0 ? R : 1;
  const int64_t per = (R + 15) / 16;
  return std::max<int64_t>(128, (per + 127) / 128 * 128);
}

// With lengths: for each time index t, the rows a step covers, [0, 1 + the last row still
// running at t) (cpu/sequence.cpp); empty without.
// The lengths the kernels read: both copies or neither (the host's decide the steps).
inline const int64_t* device_lengths(const int64_t* host, const int64_t* dev) {
  if ((host == nullptr) != (dev == nullptr)) {
    throw std::invalid_argument("lengths and dev_lengths: both copies of the lengths, or neither");
  }
  return dev;
}

inline std::vector<int64_t> step_rows(const SeqWalk& w, int64_t N) {
  std::vector<int64_t> m(w.len ? size_t(w.T) : 0, 0);
  for (int64_t n = 0; w.len && n < N; ++n) {
    for (int64_t t = 0; t < w.length(n); ++t) m[size_t(t)] = n + 1;
  }
  return m;
}

}  // namespace

namespace {
// A bfloat16 call's context (ctx.bf16 set; the scratch after `own` elements of work, the weights
// converted): the scratch's regions of bf16_layout, the weights converted on ctx's stream.
template <class Cell, class T>
GpuContext bf16_context(const GpuContext& ctx, Bf16Gemms& bf, const SeqShape& s, T* work, int64_t own,
                        const T* Wx, const T* Wh) {
  GpuContext c = ctx;
  if constexpr (std::is_same<T, float>::value) {
    const Bf16Layout l = bf16_layout<Cell>(s);
    const uintptr_t start = (reinterpret_cast<uintptr_t>(work + own) + 255) & ~uintptr_t(255);
    uint16_t* base = reinterpret_cast<uint16_t*>(start);
    const int64_t G = Cell::kGates * s.H;
    uint16_t* wx16 = base + l.wx;
    uint16_t* wh16 = base + l.wh;
    PYLSTM_LAUNCH(to_bf16_kernel, blocks_for(s.D * G), kBlock, ctx.stream, s.D, G, Wx, G, wx16, G);
    PYLSTM_LAUNCH(to_bf16_kernel, blocks_for(s.H * G), kBlock, ctx.stream, s.H, G, Wh, G, wh16, G);
    bf.w[0] = Wx;
    bf.w[1] = Wh;
    bf.w16[0] = wx16;
    bf.w16[1] = wh16;
    bf.wn[0] = s.D * G;
    bf.wn[1] = s.H * G;
    bf.a16 = base + l.a;
    bf.b16 = base + l.b;
    c.bf16 = &bf;
  } else {
    (void)bf, (void)s, (void)work, (void)own, (void)Wx, (void)Wh;
    throw std::invalid_argument("bf16: bfloat16 GEMMs apply to float32 arrays");
  }
  return c;
}
}  // namespace

template <class Cell, class T>
void seq_forward_cuda(const GpuContext& ctx_in, const ForwardArgs<T>& a) {
  using Call = CellCall<Cell>;
  constexpr bool kC = Cell::kHasCellState;
  const SeqShape& s = a.s;
  // A rows of GS = kS*H (cpu/sequence.cpp): a split block's recurrent part goes to the spare
  // blocks after the kG gate blocks, apart from its input part.
  const int64_t N = s.N, Tn = s.T, D = s.D, H = s.H, G = Cell::kGates * H, GS = Call::kS * H,
                Gs = (Cell::kGates - Call::kSplit) * H;
  const T *xs = a.xs, *h0 = a.h0, *c0 = kC ? a.c0 : nullptr, *Wx = a.Wx, *Wh = a.Wh, *b = a.b;
  T *hs = a.hs, *cs = kC ? a.cs : nullptr;
  const bool save = a.gates != nullptr;
  T* A = save ? a.gates : a.work;
  T* c_run = save || !kC ? nullptr : a.work + N * Tn * GS;
  // a gated cell's r * h_{t-1} of a step (N, H), after the rest of the workspace
  T* RH = a.work + (save ? 0 : N * Tn * GS + (kC ? N * H : 0));
  Bf16Gemms bf;
  const GpuContext ctx = a.bf16 ? bf16_context<Cell>(ctx_in, bf, s, a.work,
                                                      seq_forward_workspace_size<Cell>(s, save), Wx, Wh)
                                : ctx_in;
  cudaStream_t st = ctx.stream;
  // The walk (common/seq_args.h): the host's lengths decide the steps and each step's rows
  // (rows_at: [0, 1 + the last row still running)), the kernels read the device copy.
  const SeqWalk walk(s, a.lengths, a.reverse);
  SeqWalk dw = walk;
  dw.len = device_lengths(a.lengths, a.dev_lengths);
  const std::vector<int64_t> rows_at = step_rows(walk, N);
  const bool stash = walk.reverse && walk.len && h0;  // (cpu/sequence.cpp)
  if (c_run) PYLSTM_LAUNCH(copy_rows_kernel<T>, blocks_for(N * H), kBlock, st, N, H, c0, H, c_run);
  if (walk.len) {
    PYLSTM_LAUNCH(walk_pad_kernel<T>, blocks_for(N * Tn * H), kBlock, st, N, Tn, H, dw, hs, save ? cs : nullptr,
                  h0, stash);
  }
  dev_gemm<T>(ctx, false, false, N * Tn, G, D, T(1), xs, D, Wx, G, T(0), A, GS);
  for (int64_t step = 0; step < walk.steps; ++step) {
    const int64_t t = walk.at(step), M = walk.len ? rows_at[t] : N;  // rows [0, M) take part
    T* A_t = A + t * GS;
    const T* h_prev = step > 0 ? hs + walk.prev(t) * H : h0;
    const int64_t ld_h = step > 0 ? Tn * H : H;
    if constexpr (Call::kGated > 0) {  // two phases (cells/gru.h): z, r and rh; then n, h
      const int64_t Kh = G - H;
      if (h_prev) dev_gemm<T>(ctx, false, false, M, Kh, H, T(1), h_prev, ld_h, Wh, G, T(1), A_t, Tn * GS);
      PYLSTM_LAUNCH((gated_fwd_gate_kernel<Cell, T>), blocks_for(M * H), kBlock, st, M, H, Tn, A_t, b,
                    hs, RH, dw, t, h0);
      if (h_prev) dev_gemm<T>(ctx, false, false, M, H, H, T(1), RH, H, Wh + Kh, G, T(1), A_t + Kh, Tn * GS);
      PYLSTM_LAUNCH((gated_fwd_out_kernel<Cell, T>), blocks_for(M * H), kBlock, st, M, H, Tn, A_t, b,
                    hs, hs + t * H, dw, t, h0);
      continue;
    }
    if (h_prev) {
      dev_gemm<T>(ctx, false, false, M, Gs, H, T(1), h_prev, ld_h, Wh, G, T(1), A_t, Tn * GS);
      if (Call::kSplit > 0) {
        dev_gemm<T>(ctx, false, false, M, G - Gs, H, T(1), h_prev, ld_h, Wh + Gs, G, T(0), A_t + G,
                    Tn * GS);
      }
    }
    const T* cp = nullptr;
    const T* c_first = nullptr;
    int64_t cp_ld = H, c_ld = H;
    T* c_out = nullptr;
    if (kC && save) {
      c_out = cs + t * H;
      c_ld = Tn * H;
      cp = step > 0 ? cs + walk.prev(t) * H : c0;
      cp_ld = step > 0 ? Tn * H : H;
      c_first = c0;
    } else if (kC) {
      c_out = c_run;
      cp = c_first = c_run;
    }
    PYLSTM_LAUNCH((seq_fwd_pointwise_kernel<Cell, T>), blocks_for(M * H), kBlock, st, M, H, Tn,
                  A_t, b, hs, h_prev != nullptr, cp, cp_ld, c_out, c_ld, hs + t * H, save,
                  a.P, dw, t, h0, c_first);
  }
  PYLSTM_LAUNCH(walk_last_kernel<T>, blocks_for(N * H), kBlock, st, N, Tn, H, dw, hs, a.hT);
  if (kC && save) PYLSTM_LAUNCH(walk_last_kernel<T>, blocks_for(N * H), kBlock, st, N, Tn, H, dw, cs, a.cT);
  if (kC && !save) PYLSTM_LAUNCH(copy_rows_kernel<T>, blocks_for(N * H), kBlock, st, N, H, c_run, H, a.cT);
  if (stash) PYLSTM_LAUNCH(walk_unstash_kernel<T>, blocks_for(N * H), kBlock, st, N, Tn, H, dw, hs);
}

template <class Cell, class T>
void seq_backward_cuda(const GpuContext& ctx_in, const BackwardArgs<T>& a) {
  using Call = CellCall<Cell>;
  constexpr bool kC = Cell::kHasCellState;
  const SeqShape& s = a.s;
  // dA rows of GS = kS*H: the recurrent side's kG blocks, then the split blocks' input side
  // (cpu/sequence.cpp); Gs columns are shared by both sides.
  const int64_t N = s.N, Tn = s.T, D = s.D, H = s.H, G = Cell::kGates * H, R = N * Tn,
                GS = Call::kS * H, Gs = (Cell::kGates - Call::kSplit) * H;
  T* dA = a.work;
  T* XH = a.work + R * GS;
  // a gated cell's r * h_{t-1} per row (R, H) and a step's dA_n Wh_n^T (N, H)
  T* RHrows = XH + R * (D + H);
  T* DRH = RHrows + R * H;
  const int64_t Kh = G - Call::kGated * H;  // columns the merged weight-gradient GEMM takes
  T* dh0 = a.dh0;
  T* dc0 = kC ? a.dc0 : nullptr;
  Bf16Gemms bf;
  const GpuContext ctx = a.bf16 ? bf16_context<Cell>(ctx_in, bf, s, a.work, seq_backward_workspace_size<Cell>(s),
                                                      a.Wx, a.Wh)
                                : ctx_in;
  cudaStream_t st = ctx.stream;
  const SeqWalk walk(s, a.lengths, a.reverse);  // (as in seq_forward_cuda)
  SeqWalk dw = walk;
  dw.len = device_lengths(a.lengths, a.dev_lengths);
  const std::vector<int64_t> rows_at = step_rows(walk, N);
  // With lengths the step's dh GEMM adds onto the carried dh (cpu/sequence.cpp).
  const bool dh_accumulate = Call::kDirectH || walk.len;
  PYLSTM_LAUNCH(copy_rows_kernel<T>, blocks_for(N * H), kBlock, st, N, H, a.dhT, H, dh0);
  if (kC) PYLSTM_LAUNCH(copy_rows_kernel<T>, blocks_for(N * H), kBlock, st, N, H, a.dcT, H, dc0);
  if (walk.len) PYLSTM_LAUNCH(walk_zero_padding_kernel<T>, blocks_for(R * GS), kBlock, st, R, Tn, GS, dw, dA);
  for (int64_t step = walk.steps - 1; step >= 0; --step) {
    const int64_t t = walk.at(step), M = walk.len ? rows_at[t] : N;  // rows [0, M) take part
    if constexpr (Call::kGated > 0) {
      PYLSTM_LAUNCH((gated_bwd_out_kernel<Cell, T>), blocks_for(M * H), kBlock, st, M, H, Tn, t, a.gates,
                    a.hs, a.h0, a.dhs, dh0, dA, dw);
      dev_gemm<T>(ctx, false, true, M, H, H, T(1), dA + t * GS + Kh, Tn * GS, a.Wh + Kh, G, T(0), DRH, H);
      PYLSTM_LAUNCH((gated_bwd_gate_kernel<Cell, T>), blocks_for(M * H), kBlock, st, M, H, Tn, t, a.gates,
                    a.hs, a.h0, DRH, dh0, dA, dw);
      dev_gemm<T>(ctx, false, true, M, H, Kh, T(1), dA + t * GS, Tn * GS, a.Wh, G, T(1), dh0, H);
      continue;
    }
    PYLSTM_LAUNCH((seq_bwd_pointwise_kernel<Cell, T>), blocks_for(M * H), kBlock, st, M, H, Tn, t,
                  a.gates, kC ? a.cs : nullptr, kC ? a.c0 : nullptr, a.hs, a.h0, a.dhs, dh0, dc0,
                  dA, a.P, dw, dh_accumulate);
    dev_gemm<T>(ctx, false, true, M, H, G, T(1), dA + t * GS, Tn * GS, a.Wh, G,
                T(dh_accumulate ? 1 : 0), dh0, H);
  }
  dev_gemm<T>(ctx, false, true, R, D, Gs, T(1), dA, GS, a.Wx, G, T(0), a.dxs, D);
  if (Call::kSplit > 0) {
    dev_gemm<T>(ctx, false, true, R, D, G - Gs, T(1), dA + G, GS, a.Wx + Gs, G, T(1), a.dxs, D);
  }
  if (walk.len) PYLSTM_LAUNCH(walk_zero_padding_kernel<T>, blocks_for(R * D), kBlock, st, R, Tn, D, dw, a.dxs);
  PYLSTM_LAUNCH(build_xh_kernel<T>, blocks_for(R * (D + H)), kBlock, st, R, Tn, D, H, a.xs, a.hs,
                a.h0, XH, dw);
  if (Call::kGated > 0) {
    PYLSTM_LAUNCH(gated_rows_kernel<T>, blocks_for(R * H), kBlock, st, R, Tn, H, a.gates, a.hs, a.h0,
                  RHrows, dw);
  }
  const int64_t kc = weight_grad_chunk<T>(R);
  for (int64_t k0 = 0; k0 < R; k0 += kc) {
    const int64_t kn = std::min(kc, R - k0), DH = D + H;
    const T beta = k0 > 0 ? T(1) : T(0);
    const T* xh = XH + k0 * DH;
    dev_gemm<T>(ctx, true, false, DH, std::min(Gs, Kh), kn, T(1), xh, DH, dA + k0 * GS, GS, beta, a.dW, G);
    if (Call::kGated > 0) {  // the gated block: X^T, and (r * h_prev)^T for its Wh
      dev_gemm<T>(ctx, true, false, D, G - Kh, kn, T(1), xh, DH, dA + k0 * GS + Kh, GS, beta, a.dW + Kh, G);
      dev_gemm<T>(ctx, true, false, H, G - Kh, kn, T(1), RHrows + k0 * H, H, dA + k0 * GS + Kh, GS, beta,
                  a.dW + D * G + Kh, G);
    }
    if (Call::kSplit > 0) {  // X^T (input side), H_prev^T (recurrent side)
      dev_gemm<T>(ctx, true, false, D, G - Gs, kn, T(1), xh, DH, dA + k0 * GS + G, GS, beta,
                  a.dW + Gs, G);
      dev_gemm<T>(ctx, true, false, H, G - Gs, kn, T(1), xh + D, DH, dA + k0 * GS + Gs, GS, beta,
                  a.dW + D * G + Gs, G);
    }
  }
  // db last: its partials reuse the XH scratch, free once the weight-gradient GEMMs have run
  // (stream order). P*G doubles fit there: rc >= 16 rows, so P*G*8 <= (R/16 + 1)*8*kGates*H
  // bytes, at most 2RH + 32H <= 4RH <= the XH bytes when P > 1 (R > 16) and kGates <= 4; 8
  // bytes of slack for the alignment.
  // dP, after db, reuses the same partials (stream order): K*H <= G columns.
  static_assert(Cell::kGates <= 4, "the db partials are sized for at most 4 gate blocks");
  static_assert(Cell::kUnitParams <= Cell::kGates, "the dP partials reuse db's");
  const int64_t rc = column_sum_rows(R), P = (R + rc - 1) / rc;
  const uintptr_t at = reinterpret_cast<uintptr_t>(XH);
  double* partials = reinterpret_cast<double*>((at + 7) / 8 * 8);
  if (P == 1) {
    PYLSTM_LAUNCH((column_partial_kernel<T, T>), dim3(blocks_for(G), 1), kBlock, st, R, G, rc, dA,
                  GS, Gs, G - Gs, a.db);
  } else {
    PYLSTM_LAUNCH((column_partial_kernel<T, double>), dim3(blocks_for(G), unsigned(P)), kBlock, st,
                  R, G, rc, dA, GS, Gs, G - Gs, partials);
    PYLSTM_LAUNCH(column_finish_kernel<T>, blocks_for(G), kBlock, st, P, G, partials, a.db);
  }
  if constexpr (Cell::kUnitParams > 0) {
    const int64_t KH = Cell::kUnitParams * H;
    const T* cs = kC ? a.cs : nullptr;
    const T* c0 = kC ? a.c0 : nullptr;
    if (P == 1) {
      PYLSTM_LAUNCH((unit_param_partial_kernel<Cell, T, T>), dim3(blocks_for(H), 1), kBlock, st, R,
                    Tn, H, rc, a.gates, cs, c0, dA, a.dP, dw);
    } else {
      PYLSTM_LAUNCH((unit_param_partial_kernel<Cell, T, double>), dim3(blocks_for(H), unsigned(P)),
                    kBlock, st, R, Tn, H, rc, a.gates, cs, c0, dA, partials, dw);
      PYLSTM_LAUNCH(column_finish_kernel<T>, blocks_for(KH), kBlock, st, P, KH, partials, a.dP);
    }
  }
}

// --- Global-norm clipping over a list of arrays (multi-tensor), two launches --------------------
// Launch 1, block b: thread t sums the squares of elements t, t + B, t + 2B, ... of chunk b
// (coalesced; four loads in flight), the block adds its threads' sums in a fixed tree, and its
// thread 0 stores the chunk's partial, then takes a ticket from the counter: the block holding
// the last ticket adds all partials (strided per thread, then the same tree), computes the norm
// and the rate, and resets the counter. Launch 2 scales. Every addition happens in an order
// fixed by the chunk table, so the norm is the same on every run.
namespace {

// Sum of red[0 .. blockDim.x) into red[0]; blockDim.x is a power of two; all threads call it.
__device__ inline void block_tree_sum(double* red) {
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
}

template <class T>
__global__ void clip_norm_kernel(ClipTable<T> tab, int64_t total_blocks, double max_norm,
                                 double* partials, unsigned* counter, double* out) {
  __shared__ double red[kClipThreads];
  __shared__ bool last;
  const ClipChunk<T> c = tab.chunk[blockIdx.x];
  const int64_t B = blockDim.x;
  double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
  int64_t i = threadIdx.x;
  for (; i + 3 * B < c.size; i += 4 * B) {
    const double v0 = double(c.data[i]), v1 = double(c.data[i + B]);
    const double v2 = double(c.data[i + 2 * B]), v3 = double(c.data[i + 3 * B]);
    a0 += v0 * v0;
    a1 += v1 * v1;
    a2 += v2 * v2;
    a3 += v3 * v3;
  }
  for (; i < c.size; i += B) {
    const double v = double(c.data[i]);
    a0 += v * v;
  }
  red[threadIdx.x] = (a0 + a1) + (a2 + a3);
  __syncthreads();
  block_tree_sum(red);
  if (threadIdx.x == 0) {
    partials[tab.first_block + blockIdx.x] = red[0];
    __threadfence();  // release: the partial is visible before the ticket is taken
    last = atomicAdd(counter, 1u) == unsigned(total_blocks - 1);
    __threadfence();  // acquire, by the thread that took the ticket, before the barrier
  }
  __syncthreads();
  if (!last) return;  // uniform across the block
  double acc = 0.0;
  for (int64_t k = threadIdx.x; k < total_blocks; k += B) acc += static_cast<volatile double*>(partials)[k];
  red[threadIdx.x] = acc;
  __syncthreads();
  block_tree_sum(red);
  if (threadIdx.x == 0) {
    const double total = sqrt(red[0]);
    const bool finite = total == total && total <= 1.7976931348623157e308;
    const double rate = clip_rate(total, max_norm);
    out[0] = total;
    out[1] = finite && max_norm > 0.0 && rate < 1.0 ? rate : 1.0;
    out[2] = finite ? 1.0 : 0.0;
    *counter = 0u;
  }
}

// Four loads in flight per thread (one per iteration would leave a large chunk's block
// latency-bound); the product in double, rounded once, as on the CPU and in the reference.
template <class T>
__global__ void clip_scale_kernel(ClipTable<T> tab, const double* out) {
  const double rate = out[1];
  if (rate >= 1.0) return;
  const ClipChunk<T> c = tab.chunk[blockIdx.x];
  const int64_t B = blockDim.x;
  int64_t i = threadIdx.x;
  for (; i + 3 * B < c.size; i += 4 * B) {
    const T v0 = c.data[i], v1 = c.data[i + B], v2 = c.data[i + 2 * B], v3 = c.data[i + 3 * B];
    c.data[i] = T(double(v0) * rate);
    c.data[i + B] = T(double(v1) * rate);
    c.data[i + 2 * B] = T(double(v2) * rate);
    c.data[i + 3 * B] = T(double(v3) * rate);
  }
  for (; i < c.size; i += B) c.data[i] = T(double(c.data[i]) * rate);
}

// Clipping by value: block b clamps chunk b in place (NaN stays NaN; the CPU's rule).
template <class T>
__global__ void clip_value_kernel(ClipTable<T> tab, T hi) {
  const ClipChunk<T> c = tab.chunk[blockIdx.x];
  for (int64_t i = threadIdx.x; i < c.size; i += blockDim.x) {
    const T v = c.data[i];
    c.data[i] = v > hi ? hi : v < -hi ? -hi : v;
  }
}

__global__ void clip_empty_kernel(double* out) {
  out[0] = 0.0;
  out[1] = 1.0;
  out[2] = 1.0;
}

template <class T>
ClipTable<T> table_slice(const ClipChunk<T>* chunks, int64_t first, int64_t count) {
  ClipTable<T> tab{};
  tab.count = count;
  tab.first_block = first;
  for (int64_t k = 0; k < count; ++k) tab.chunk[k] = chunks[first + k];
  return tab;
}

}  // namespace

template <class T>
void clip_grads_cuda(const GpuContext& ctx, const ClipChunk<T>* chunks, int64_t nchunks,
                     double max_norm, double* partials, unsigned* counter, double* out) {
  cudaStream_t st = ctx.stream;
  if (nchunks == 0) {
    PYLSTM_LAUNCH(clip_empty_kernel, 1, 1, st, out);
    return;
  }
  for (int64_t first = 0; first < nchunks; first += kClipMaxChunks) {
    const int64_t count = nchunks - first < kClipMaxChunks ? nchunks - first : kClipMaxChunks;
    PYLSTM_LAUNCH_SYNC(clip_norm_kernel<T>, unsigned(count), kClipThreads, st,
                       table_slice(chunks, first, count), nchunks, max_norm, partials, counter,
                       out);
  }
  if (max_norm <= 0.0) return;
  for (int64_t first = 0; first < nchunks; first += kClipMaxChunks) {
    const int64_t count = nchunks - first < kClipMaxChunks ? nchunks - first : kClipMaxChunks;
    PYLSTM_LAUNCH(clip_scale_kernel<T>, unsigned(count), kClipThreads, st,
                  table_slice(chunks, first, count), out);
  }
}

template <class T>
void clip_value_cuda(const GpuContext& ctx, const ClipChunk<T>* chunks, int64_t nchunks, double limit) {
  for (int64_t first = 0; first < nchunks; first += kClipMaxChunks) {
    const int64_t count = nchunks - first < kClipMaxChunks ? nchunks - first : kClipMaxChunks;
    PYLSTM_LAUNCH(clip_value_kernel<T>, unsigned(count), kClipThreads, ctx.stream,
                  table_slice(chunks, first, count), T(limit));
  }
}

template void clip_value_cuda<float>(const GpuContext&, const ClipChunk<float>*, int64_t, double);
template void clip_value_cuda<double>(const GpuContext&, const ClipChunk<double>*, int64_t, double);
template void clip_grads_cuda<float>(const GpuContext&, const ClipChunk<float>*, int64_t, double,
                                     double*, unsigned*, double*);
template void clip_grads_cuda<double>(const GpuContext&, const ClipChunk<double>*, int64_t,
                                      double, double*, unsigned*, double*);

#define PYLSTM_INSTANTIATE_CUDA(Cell, T)                                       \
  template void seq_forward_cuda<Cell, T>(const GpuContext&, const ForwardArgs<T>&); \
  template void seq_backward_cuda<Cell, T>(const GpuContext&, const BackwardArgs<T>&);
#define PYLSTM_INSTANTIATE_CUDA_CELL(Cell, name) \
  PYLSTM_INSTANTIATE_CUDA(Cell, float) PYLSTM_INSTANTIATE_CUDA(Cell, double)
PYLSTM_FOR_EACH_CELL(PYLSTM_INSTANTIATE_CUDA_CELL)
#undef PYLSTM_INSTANTIATE_CUDA_CELL
#undef PYLSTM_INSTANTIATE_CUDA

}  // namespace pylstm
