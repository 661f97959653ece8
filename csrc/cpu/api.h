// The CPU backend's C++ API: the recurrent sequence driver (every cell of cells/registry.h),
// global-norm clipping and the dense ops. Called by the pybind11 module (bind/cpu.cpp) and by
// the native benchmark; the CUDA backend declares its counterparts in cuda/api.h. All arrays are
// C-contiguous, row-major, batch-major (N, T, .), of one dtype (float or double); no pointer may
// alias another unless stated. Sizes are validated by the caller (the bindings); these
// functions do not check them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/seq_args.h"

namespace pylstm {

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

// sqrt(sum of squares of every element of every array), accumulated in double in a fixed order
// (chunks of fixed size, partial sums added in order), so the result does not depend on the
// thread count.
template <class T>
double global_norm_cpu(const std::vector<Span<T>>& arrays);

// Multiplies every element of every array by rate, in place.
template <class T>
void scale_arrays_cpu(const std::vector<Span<T>>& arrays, double rate);

// Clipping by value: every element of every array clamped to [-limit, limit] in place (limit >
// 0, finite; rounded to T, so past float32's range it clamps nothing); NaN stays NaN, +-inf
// become +-limit.
template <class T>
void clip_value_cpu(const std::vector<Span<T>>& arrays, double limit);

// out = sum_k w[k] * in[k], elementwise (every in[k] out.size long; out may be one of them,
// no other overlap): the products summed in double in the order of k and rounded once.
// Returns the sum of squares of the rounded result (double, in fixed chunks: the same at any
// thread count).
template <class T>
double weighted_sum_cpu(Span<T> out, const std::vector<const T*>& in, const std::vector<double>& w);

// SGD: p -= T(lr) * g for every pair (params[a], grads[a]) of equal sizes, the product rounded
// to T before the difference (numpy's p -= lr * g), in one pass. scale != 1: g taken as
// T(g * scale) (clipping's factor, the product in double), the grads left as they are.
template <class T>
void sgd_update_cpu(const std::vector<Span<T>>& params, const std::vector<Span<T>>& grads, double lr,
                    double scale);

// C (M, N, ldc) = op(A) (M, K) @ op(B) (K, N) + beta * C, row-major, on the thread pool (the
// output split by columns or rows, one single-threaded BLAS call per thread). op = transpose
// when trans_*; lda/ldb are the leading dimensions of A and B as stored.
//   bias    (N,) or nullptr: C = op(A) op(B) + bias, every row (only with beta = 0)
//   colsum  (N,) or nullptr, out: the column sums of op(B) over its K rows, summed in double
//           (the Affine layer's db = dout.sum(axis=0) in the pass that reads dout anyway)
//   bf16    the operands rounded to bfloat16, float32 accumulation (float32, beta = 0, on the
//           packed kernel with AVX512-BF16: std::invalid_argument otherwise)
template <class T>
void matmul_cpu(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A,
                int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc,
                const T* bias = nullptr, T* colsum = nullptr, bool bf16 = false);

// dst (C, R; rows ldd apart) = src (R, C; rows lds apart) transposed, in cache tiles on the
// thread pool (the PyTorch module's weight gradients: pylstm's (K, G*H) blocks to torch's rows).
template <class T>
void transpose_cpu(int64_t R, int64_t C, const T* src, int64_t lds, T* dst, int64_t ldd);

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

// Whether seq_forward_cpu's float32 kernel path packs the weights or reads them in place
// (cpu/sequence.cpp, weights_in_place): kAuto picks by rows per call; the others force one (a
// test hook: both give the same bits). Returns the previous setting. matmul_cpu follows it too.
enum class WeightReading : int { kAuto = 0, kPacked = 1, kInPlace = 2 };
WeightReading set_weight_reading(WeightReading w);
WeightReading get_weight_reading();

// Thread count used by the kernels; n is capped at the CPUs this process may run on.
void set_num_threads(int n);
int get_num_threads();

}  // namespace pylstm
