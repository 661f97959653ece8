// Dense helpers for the layers around the LSTM, on pylstm's thread pool (declared in cpu/api.h;
// called by bind/cpu.cpp): a matrix product (the Affine layers) and a fused softmax
// cross-entropy (TimeSoftmaxWithLoss). Running them here instead of in NumPy keeps a training
// step on one thread pool: NumPy's OpenBLAS threads, still spinning after a NumPy matmul,
// slowed the recurrent kernels that followed by more than 2x in a character-model step.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "cpu/blas.h"
#include "cpu/packed_gemm.h"
#include "common/activations.h"
#include "cpu/api.h"
#include "cpu/threads.h"

namespace pylstm {

namespace {
constexpr int64_t kColAlign = 16;
constexpr int64_t kRowAlign = 8;

// Products of at most this many rows read B in place instead of packing it: a few micro-tiles
// of rows use each element of B a few times, so a packing pass (a read and a write of B) costs
// more than it saves (the output layer of a generation step: one row against 650 x 10000 took a
// sixth of the time; benchmarks/RESULTS.md has the crossover). A transposed B (gemm_bt_rows)
// repeats its register transposes for every 8 rows of A: at 32 rows it was no faster than
// packing, so it stops at one micro-tile.
constexpr int64_t kInPlaceMaxRows = 32, kInPlaceMaxRowsTransposed = 8;

// Whether a product with M rows reads B in place (the test hook's setting, or by rows).
bool b_in_place(int64_t M, bool trans_b) {
  const WeightReading w = get_weight_reading();
  if (w != WeightReading::kAuto) return w == WeightReading::kInPlace;
  return M <= (trans_b ? kInPlaceMaxRowsTransposed : kInPlaceMaxRows);
}
}  // namespace

namespace {

// sums[j] += column c0 + j of op(B) (K x N) over its K rows, in order, in double, j < n.
template <class T>
void add_column_sums(bool trans_b, int64_t K, int64_t c0, int64_t n, const T* B, int64_t ldb,
                     double* sums) {
  if (trans_b) {  // column j of op(B) is row c0 + j of the stored matrix
    for (int64_t j = 0; j < n; ++j) {
      const T* row = B + (c0 + j) * ldb;
      double acc = sums[j];
      for (int64_t k = 0; k < K; ++k) acc += double(row[k]);
      sums[j] = acc;
    }
    return;
  }
  for (int64_t k = 0; k < K; ++k) {
    const T* row = B + k * ldb + c0;
    for (int64_t j = 0; j < n; ++j) sums[j] += double(row[j]);
  }
}

// Packs columns [c0, c1) of op(B) (K x N) into the panels of a packed_b_size(K, N) buffer
// (panel p at p*K*16; c0 a multiple of 16): each thread packs its own columns, so one buffer
// serves every thread. With sums (row-major B: in the same pass; a transposed B: after it),
// sums[c0 + j] += column c0 + j of op(B), in double.
void pack_columns(bool trans_b, int64_t K, int64_t c0, int64_t c1, const float* B, int64_t ldb,
                  float* packed, double* sums, GemmPrecision prec) {
  if (c1 <= c0) return;
  float* out = packed + (c0 / 16) * K * 16;
  if (trans_b) {
    pack_b(K, c1 - c0, [&](int64_t j) { return B + (c0 + j) * ldb; }, 1, out, prec);
    if (sums) add_column_sums(true, K, c0, c1 - c0, B, ldb, sums + c0);
  } else {
    pack_b_rows(K, c1 - c0, B + c0, ldb, out, sums ? sums + c0 : nullptr, prec);
  }
}

}  // namespace

template <class T>
void matmul_cpu(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A,
                int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc, const T* bias,
                T* colsum, bool bf16) {
  int nt = get_num_threads();
  if (M * N * K < (int64_t(1) << 18)) nt = 1;  // too small to split
  if (bf16 && !(std::is_same<T, float>::value && beta == T(0) && packed_gemm_enabled() && cpu_has_avx512_bf16())) {
    throw std::invalid_argument("bf16: bfloat16 GEMMs need float32, beta = 0, the packed kernel and AVX512-BF16");
  }
  const GemmPrecision prec = bf16 ? GemmPrecision::kBfloat16 : GemmPrecision::kFloat32;
  // float32 with beta = 0 runs on the packed-weight kernel (cpu/packed_gemm.h says why); the rest
  // on BLAS. Split the output along its longer side, so each thread keeps a wide block.
  // (N < 16: the packed panels would pad B to 16 columns, up to 16x its size, for a GEMV-like
  // product the kernel does not speed up)
  const bool packed = std::is_same<T, float>::value && beta == T(0) && (N >= 16 || bf16) &&
                      packed_gemm_enabled();
  const bool by_cols = N >= M;
  // B read in place (b_in_place): row-major through gemm_rowmajor_b, or its stored rows against
  // a transposed B (the tied output layer, embed_W.T, of a generation step) through gemm_bt_rows;
  // either way the packed path's bits. bfloat16 rounds B as it packs it.
  const bool in_place = packed && !trans_a && !bf16 && b_in_place(M, trans_b);
  // Column sums of op(B), in double, rounded once: the same result at any thread count.
  std::vector<double> sums(colsum ? size_t((N + 15) / 16 * 16) : 0, 0.0);
  // The packed path packs B once into one buffer (the Affine weights change every step, so
  // per call; one pass over B against K passes of the multiply), allocated here on the caller
  // (not inside the pool). Split by columns, each thread packs and uses its own columns; split
  // by rows, every thread needs all of B: the threads pack a share of the panels each, then
  // meet at a barrier (before, each packed all of B: at (700 x 10000) @ (10000 x 650) 26 MB
  // written per thread per call).
  thread_local std::vector<float> packed_buf;  // the caller's: the lambda uses the pointer
  const size_t packed_size = packed && !in_place ? size_t(packed_b_size(K, N)) : 0;
  if (packed_buf.size() < packed_size) packed_buf.resize(packed_size);
  float* const pb = packed_buf.data();
  parallel_run(nt, [&](const Team& team) {
    int64_t lo, hi;
    if (by_cols) team.split(N, kColAlign, lo, hi);
    else team.split(M, kRowAlign, lo, hi);
    const int64_t r0 = by_cols ? 0 : lo, r1 = by_cols ? M : hi;
    const int64_t c0 = by_cols ? lo : 0, c1 = by_cols ? hi : N;
    if constexpr (std::is_same<T, float>::value) {
      if (in_place) {
        if (hi <= lo) return;
        if (colsum) add_column_sums(trans_b, K, c0, c1 - c0, B, ldb, sums.data() + c0);
        float* cp = C + r0 * ldc + c0;
        if (!trans_b) {
          const float* bb = bias ? bias + c0 : nullptr;
          gemm_rowmajor_b(r1 - r0, c1 - c0, K, A + r0 * lda, lda, B + c0, ldb, cp, ldc, false, bb);
          return;
        }
        if (bias) tile_from_bias(bias, c0, c1 - c0, r1 - r0, cp, ldc);  // then accumulated onto
        gemm_bt_rows(r1 - r0, c1 - c0, K, A + r0 * lda, lda, B + c0 * ldb, ldb, cp, ldc, bias != nullptr);
        return;
      }
      if (packed) {
        double* sp = colsum ? sums.data() : nullptr;
        if (by_cols) {
          pack_columns(trans_b, K, c0, c1, B, ldb, pb, sp, prec);
        } else {
          int64_t p0, p1;
          team.split(N, 16, p0, p1);
          pack_columns(trans_b, K, p0, p1, B, ldb, pb, sp, prec);
          team.barrier();
        }
        if (hi <= lo) return;
        const float* bp = pb + (c0 / 16) * K * 16;
        const float* bb = bias ? bias + c0 : nullptr;
        float* cp = C + r0 * ldc + c0;
        if (trans_a) gemm_at_packed_b(r1 - r0, c1 - c0, K, A + r0, lda, bp, cp, ldc, false, bb, prec);
        else gemm_packed_b(r1 - r0, c1 - c0, K, A + r0 * lda, lda, bp, cp, ldc, false, bb, prec);
        return;
      }
    }
    if (hi <= lo) return;
    double* my_sums = colsum && (by_cols || lo == 0) ? sums.data() + c0 : nullptr;
    T b = beta;
    if (bias) {  // C = bias + op(A) op(B): the block starts from the bias rows
      for (int64_t r = r0; r < r1; ++r) std::copy(bias + c0, bias + c1, C + r * ldc + c0);
      b = T(1);
    }
    const T* Ap = trans_a ? A + r0 : A + r0 * lda;
    const T* Bp = trans_b ? B + c0 * ldb : B + c0;
    gemm(trans_a, trans_b, int(r1 - r0), int(c1 - c0), int(K), T(1), Ap, int(lda), Bp, int(ldb),
         b, C + r0 * ldc + c0, int(ldc));
    if (my_sums) add_column_sums(trans_b, K, c0, c1 - c0, B, ldb, my_sums);
  });
  if (colsum) {
    for (int64_t j = 0; j < N; ++j) colsum[j] = T(sums[size_t(j)]);
  }
}

namespace {

// exp(x) for x <= 0 (softmax after the max is subtracted), with the kernels' own exp.
template <class T>
inline T exp_nonpos(T x) {
  T s, p;
  exp_split<T>(clamp_arg<T>(x, -ExpTraits<T>::kMaxArg, T(0)), s, p);
  return s + s * p;
}

template <class T>
__attribute__((always_inline)) inline double row_sum_exp(const T* s, int64_t V, T m) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t v = 0; v < V; ++v) acc += exp_nonpos<T>(s[v] - m);
  return double(acc);
}

// The same sum, keeping each exp in d (the gradient row): the exps are computed once.
template <class T>
__attribute__((always_inline)) inline double row_store_exp(const T* s, T* d, int64_t V, T m) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t v = 0; v < V; ++v) {
    const T e = exp_nonpos<T>(s[v] - m);
    d[v] = e;
    acc += e;
  }
  return double(acc);
}

template <class T>
__attribute__((always_inline)) inline void row_scale(T* d, int64_t V, T inv_sum, T scale) {
#pragma omp simd
  for (int64_t v = 0; v < V; ++v) d[v] = d[v] * inv_sum * scale;
}

#define PYLSTM_SOFTMAX_ROWS(T)                                                                   \
  PYLSTM_CLONES double sum_exp_row(const T* s, int64_t V, T m) { return row_sum_exp<T>(s, V, m); } \
  PYLSTM_CLONES double store_exp_row(const T* s, T* d, int64_t V, T m) {                        \
    return row_store_exp<T>(s, d, V, m);                                                        \
  }                                                                                             \
  PYLSTM_CLONES void scale_row(T* d, int64_t V, T inv_sum, T scale) {                           \
    row_scale<T>(d, V, inv_sum, scale);                                                         \
  }
PYLSTM_SOFTMAX_ROWS(float)
PYLSTM_SOFTMAX_ROWS(double)
#undef PYLSTM_SOFTMAX_ROWS

// The row's maximum, vectorized (a scalar compare-and-select chain was most of the loss's time
// at V = 10000). Exact, so the same m in any order; a NaN in the row makes the loss NaN
// whichever m it gives.
template <class T>
__attribute__((always_inline)) inline T row_max_simd(const T* s, int64_t V) {
  T m = s[0];
#pragma omp simd reduction(max : m)
  for (int64_t v = 1; v < V; ++v) m = s[v] > m ? s[v] : m;
  return m;
}
PYLSTM_CLONES float row_max(const float* s, int64_t V) { return row_max_simd<float>(s, V); }
PYLSTM_CLONES double row_max(const double* s, int64_t V) { return row_max_simd<double>(s, V); }

}  // namespace

template <class T>
double softmax_xent_cpu(int64_t M, int64_t V, const T* scores, const int32_t* labels,
                        int32_t ignore_label, double* lse, T* dscores, double grad_scale,
                        int64_t* count) {
  // Per-row losses land in a buffer and are summed in row order: deterministic for any
  // thread count.
  std::vector<double> row_loss(M);
  int nt = get_num_threads();
  if (M * V < (int64_t(1) << 15)) nt = 1;
  parallel_run(nt, [&](const Team& team) {
    int64_t r0, r1;
    team.split(M, 1, r0, r1);
    for (int64_t r = r0; r < r1; ++r) {
      const T* s = scores + r * V;
      const T m = row_max(s, V);
      T* d = dscores ? dscores + r * V : nullptr;
      const double se = d ? store_exp_row(s, d, V, m) : sum_exp_row(s, V, m);
      const double l = double(m) + std::log(se);
      lse[r] = l;
      const int32_t t = labels[r];
      const bool use = t != ignore_label;
      row_loss[r] = use ? l - double(s[t]) : 0.0;
      if (d) {
        const T scale = use ? T(grad_scale) : T(0);
        scale_row(d, V, T(1.0 / se), scale);
        if (use) d[t] -= scale;
      }
    }
  });
  double total = 0.0;
  int64_t n = 0;
  for (int64_t r = 0; r < M; ++r) {
    total += row_loss[r];
    n += labels[r] != ignore_label;
  }
  *count = n;
  return total;
}

template <class T>
void transpose_cpu(int64_t R, int64_t C, const T* src, int64_t lds, T* dst, int64_t ldd) {
  constexpr int64_t kTile = 32;  // 32 x 32 tiles: the rows of both sides stay in L1
  const int64_t min_rows = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(R, 1));
  if (std::is_same<T, float>::value && packed_gemm_enabled()) {
    // 16 x 16 blocks in registers, a 64-column strip of src per chunk: each step reads 16 rows
    // of 256 bytes and writes 64 rows of 64 bytes (the scalar tiles below took 2-3x as long).
    parallel_chunks(C, 64, min_rows, [&](int64_t c0, int64_t c1) {
      transpose_block_avx512(0, R, c0, c1, reinterpret_cast<const float*>(src), lds,
                             reinterpret_cast<float*>(dst), ldd);
    });
    return;
  }
  parallel_chunks(C, kTile, min_rows, [&](int64_t c0, int64_t c1) {
    for (int64_t r0 = 0; r0 < R; r0 += kTile) {
      const int64_t r1 = std::min(R, r0 + kTile);
      for (int64_t c = c0; c < c1; ++c) {
        T* d = dst + c * ldd;
        for (int64_t r = r0; r < r1; ++r) d[r] = src[r * lds + c];
      }
    }
  });
}

template void transpose_cpu<float>(int64_t, int64_t, const float*, int64_t, float*, int64_t);
template void transpose_cpu<double>(int64_t, int64_t, const double*, int64_t, double*, int64_t);
template void matmul_cpu<float>(bool, bool, int64_t, int64_t, int64_t, const float*, int64_t,
                                const float*, int64_t, float, float*, int64_t, const float*,
                                float*, bool);
template void matmul_cpu<double>(bool, bool, int64_t, int64_t, int64_t, const double*, int64_t,
                                 const double*, int64_t, double, double*, int64_t, const double*,
                                 double*, bool);
template double softmax_xent_cpu<float>(int64_t, int64_t, const float*, const int32_t*, int32_t,
                                        double*, float*, double, int64_t*);
template double softmax_xent_cpu<double>(int64_t, int64_t, const double*, const int32_t*, int32_t,
                                         double*, double*, double, int64_t*);

}  // namespace pylstm
