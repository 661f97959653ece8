// pylstm's public C++ API: the fused LSTM sequence kernels and global-norm clipping on the CPU.
// Called by the pybind11 module (bind_cpu.cpp) and by the native benchmark; the CUDA backend
// will declare the same functions with a _cuda suffix. All arrays are C-contiguous, row-major,
// batch-major (N, T, .), of one dtype (float or double); no pointer may alias another unless
// stated. Sizes are validated by the caller (the bindings); these functions do not check them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace pylstm {

// N batch, T time steps, D input size, H hidden size. All >= 1.
struct LstmShape {
  int64_t N, T, D, H;
};

// Elements of scratch memory the kernels need (the caller allocates it).
//   forward with saving for backward: none (gates and cs are the saved state);
//   forward-only: N*T*4H (input projection) + N*H (running c);
//   backward: N*T*4H (dA) + N*T*(D+H) ([X | H_prev] rows for the merged weight-gradient GEMM).
// The same sizes hold for the CUDA kernels (lstm_cuda.h).
inline int64_t lstm_forward_workspace_size(const LstmShape& s, bool save_for_backward) {
  return save_for_backward ? 0 : s.N * s.T * 4 * s.H + s.N * s.H;
}
inline int64_t lstm_backward_workspace_size(const LstmShape& s) {
  return s.N * s.T * 4 * s.H + s.N * s.T * (s.D + s.H);
}

// Forward pass over the whole sequence.
//   xs    (N, T, D)  in
//   h0    (N, H)     in, or nullptr for zeros
//   c0    (N, H)     in, or nullptr for zeros
//   Wx    (D, 4H)    in;  Wh (H, 4H) in;  b (4H,) in.  Gate blocks f, g, i, o.
//   hs    (N, T, H)  out: h_t for every step
//   hT    (N, H)     out: h_{T-1} (a copy of hs[:, T-1])
//   cT    (N, H)     out: c_{T-1}
//   gates (N, T, 4H) out: activated gates (f, g, i, o), saved for backward; nullptr = forward-only
//   cs    (N, T, H)  out: cell states c_t, saved for backward; nullptr iff gates is nullptr
//   work  scratch of work_size elements: at least lstm_forward_cpu_workspace_size<T>(s,
//         gates != nullptr); work_size = -1 means lstm_forward_workspace_size(s, ...), which is
//         always enough. (std::invalid_argument when work_size is too small for the call.)
template <class T>
void lstm_forward_cpu(const LstmShape& s, const T* xs, const T* h0, const T* c0, const T* Wx,
                      const T* Wh, const T* b, T* hs, T* hT, T* cT, T* gates, T* cs, T* work,
                      int64_t work_size = -1);

// Scratch lstm_forward_cpu needs: lstm_forward_workspace_size(s, save), except N*H for a
// float32 forward-only call on the step-projection schedule, which keeps no pre-activations.
template <class T>
int64_t lstm_forward_cpu_workspace_size(const LstmShape& s, bool save);

// Backward pass over the whole sequence (t = T-1 .. 0), from the state the forward saved.
//   xs, h0 (nullable), c0 (nullable), Wh, hs, gates, cs: as given to / returned by forward
//   Wx    (D, 4H)    in
//   dhs   (N, T, H)  in: gradient of the loss with respect to hs
//   dhT   (N, H)     in, or nullptr: gradient with respect to hT (added to dhs[:, T-1])
//   dcT   (N, H)     in, or nullptr: gradient with respect to cT
//   dxs   (N, T, D)  out
//   dh0   (N, H)     out;  dc0 (N, H) out
//   dW    (D+H, 4H)  out: rows 0..D-1 are dWx, rows D..D+H-1 are dWh (one merged GEMM)
//   db    (4H,)      out
//   work  lstm_backward_workspace_size(s) elements, scratch
template <class T>
void lstm_backward_cpu(const LstmShape& s, const T* xs, const T* h0, const T* c0, const T* Wx,
                       const T* Wh, const T* hs, const T* gates, const T* cs, const T* dhs,
                       const T* dhT, const T* dcT, T* dxs, T* dh0, T* dc0, T* dW, T* db, T* work);

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

// Which schedule lstm_forward_cpu uses for its float32 packed-weight path (lstm_cpu.cpp,
// step_projection): kAuto picks by shape; the others force one (a test hook, so that every
// kernel test runs both). Returns the previous setting.
enum class ForwardSchedule : int { kAuto = 0, kProjectionFirst = 1, kStepProjection = 2 };
ForwardSchedule set_forward_schedule(ForwardSchedule s);

// Thread count used by the kernels; n is capped at the CPUs this process may run on.
void set_num_threads(int n);
int get_num_threads();

}  // namespace pylstm
