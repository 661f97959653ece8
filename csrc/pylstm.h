// pylstm's public C++ API: the fused recurrent sequence kernels (one driver for every cell of
// cells/), global-norm clipping and the dense ops on the CPU. Called by the pybind11 module
// (bind_cpu.cpp) and by the native benchmark; the CUDA backend declares its counterparts in
// lstm_cuda.h. All arrays are C-contiguous, row-major,
// batch-major (N, T, .), of one dtype (float or double); no pointer may alias another unless
// stated. Sizes are validated by the caller (the bindings); these functions do not check them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace pylstm {

// N batch, T time steps, D input size, H hidden size. All >= 1.
struct SeqShape {
  int64_t N, T, D, H;
};
using LstmShape = SeqShape;

// The arrays of one forward call of a recurrent layer with cell C (cells/*.h), which has
// G = C::kGates gate blocks of H columns. Arrays named c* exist only for a cell with a cell
// state (C::kHasCellState); for one without, they are nullptr.
//   xs    (N, T, D)  in
//   h0    (N, H)     in, or nullptr for zeros (then step 0 has no recurrent product)
//   c0    (N, H)     in, or nullptr for zeros
//   Wx    (D, G*H)   in;  Wh (H, G*H) in;  b (G*H,) in
//   hs    (N, T, H)  out: h_t for every step
//   hT    (N, H)     out: h_{T-1} (a copy of hs[:, T-1])
//   cT    (N, H)     out: c_{T-1}
//   gates (N, T, G*H) out: the cell's activations, saved for backward; nullptr = forward-only
//   cs    (N, T, H)  out: cell states c_t, saved for backward; nullptr when gates is nullptr
//   work  scratch of work_size elements: at least seq_forward_cpu_workspace_size; work_size = -1
//         means seq_forward_workspace_size, which is always enough (std::invalid_argument when
//         work_size is too small for the call)
template <class T>
struct ForwardArgs {
  SeqShape s;
  const T *xs, *h0, *c0, *Wx, *Wh, *b;
  T *hs, *hT, *cT, *gates, *cs, *work;
  int64_t work_size = -1;
};

// The arrays of one backward call (t = T-1 .. 0), from the state the forward saved.
//   xs, h0, c0, Wx, Wh, hs, gates, cs: as given to / returned by forward (c* nullptr as there)
//   dhs   (N, T, H)  in: gradient of the loss with respect to hs
//   dhT   (N, H)     in, or nullptr: gradient with respect to hT (added to dhs[:, T-1])
//   dcT   (N, H)     in, or nullptr: gradient with respect to cT
//   dxs   (N, T, D)  out
//   dh0   (N, H)     out;  dc0 (N, H) out (nullptr without a cell state)
//   dW    (D+H, G*H) out: rows 0..D-1 are dWx, rows D..D+H-1 are dWh (one merged GEMM)
//   db    (G*H,)     out
//   work  seq_backward_workspace_size elements, scratch
template <class T>
struct BackwardArgs {
  SeqShape s;
  const T *xs, *h0, *c0, *Wx, *Wh, *hs, *gates, *cs, *dhs, *dhT, *dcT;
  T *dxs, *dh0, *dc0, *dW, *db, *work;
};

// Elements of scratch memory the drivers need (the caller allocates it), for G gate blocks:
//   forward with saving for backward: none (the gates buffer holds the pre-activations first);
//   forward-only: N*T*G*H (input projection) + N*H (running c, with a cell state);
//   backward: N*T*G*H (dA) + N*T*(D+H) ([X | H_prev] rows for the merged weight-gradient GEMM).
// The same sizes hold for the CUDA drivers (lstm_cuda.h).
template <class Cell>
int64_t seq_forward_workspace_size(const SeqShape& s, bool save_for_backward) {
  if (save_for_backward) return 0;
  return s.N * s.T * Cell::kGates * s.H + (Cell::kHasCellState ? s.N * s.H : 0);
}
template <class Cell>
int64_t seq_backward_workspace_size(const SeqShape& s) {
  return s.N * s.T * Cell::kGates * s.H + s.N * s.T * (s.D + s.H);
}

// Forward and backward over the whole sequence on the CPU (cpu/sequence.cpp), instantiated for
// every cell of cells/ and float / double.
template <class Cell, class T>
void seq_forward_cpu(const ForwardArgs<T>& a);
template <class Cell, class T>
void seq_backward_cpu(const BackwardArgs<T>& a);

// Scratch seq_forward_cpu needs: seq_forward_workspace_size, except for a float32
// forward-only call on the step-projection schedule, which keeps no pre-activations (N*H for
// the running c of a cell with a cell state, else 0).
template <class Cell, class T>
int64_t seq_forward_cpu_workspace_size(const SeqShape& s, bool save);

// One array of a gradient list: a pointer and its element count.
template <class T>
struct Span {
  T* data;
  int64_t size;
};

// sqrt(sum of squares of every element of every array), accumulated in double in a fixed order
// (chunks of fixed size, partial sums added in order), so the result does not depend on the
// thread count.
template <class T>
double global_norm_cpu(const std::vector<Span<T>>& arrays);

// Multiplies every element of every array by rate, in place.
template <class T>
void scale_arrays_cpu(const std::vector<Span<T>>& arrays, double rate);

// C (M, N, ldc) = op(A) (M, K) @ op(B) (K, N) + beta * C, row-major, on the thread pool (the
// output split by columns or rows, one single-threaded BLAS call per thread). op = transpose
// when trans_*; lda/ldb are the leading dimensions of A and B as stored.
//   bias    (N,) or nullptr: C = op(A) op(B) + bias, every row (only with beta = 0)
//   colsum  (N,) or nullptr, out: the column sums of op(B) over its K rows, summed in double
//           (the Affine layer's db = dout.sum(axis=0) in the pass that reads dout anyway)
template <class T>
void matmul_cpu(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A,
                int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc,
                const T* bias = nullptr, T* colsum = nullptr);

// Softmax cross-entropy over M rows of V scores (row-major), labels in [0, V) or ignore_label.
//   lse      (M,)   out: log-sum-exp of each row
//   dscores  (M, V) out, or nullptr: grad_scale * (softmax - onehot), zero rows where ignored
//   count    out: rows whose label is not ignore_label
// Returns the sum of -log softmax[label] over those rows (a double, summed in row order).
template <class T>
double softmax_xent_cpu(int64_t M, int64_t V, const T* scores, const int32_t* labels,
                        int32_t ignore_label, double* lse, T* dscores, double grad_scale,
                        int64_t* count);

// Which schedule seq_forward_cpu uses for its float32 packed-weight path (cpu/sequence.cpp,
// step_projection): kAuto picks by shape; the others force one (a test hook, so that every
// kernel test runs both). Returns the previous setting.
enum class ForwardSchedule : int { kAuto = 0, kProjectionFirst = 1, kStepProjection = 2 };
ForwardSchedule set_forward_schedule(ForwardSchedule s);

// Thread count used by the kernels; n is capped at the CPUs this process may run on.
void set_num_threads(int n);
int get_num_threads();

}  // namespace pylstm
