// The packed-weight GEMM kernel of the recurrent drivers (called by cpu/sequence.cpp and the
// dense ops): an AVX-512 register-blocked micro-kernel over a B matrix packed into 16-column
// panels (the weights, packed once per call, or dA for the weight gradient). Used for every
// float32 GEMM of the forward and backward: the per-step recurrent products (few rows, M =
// batch), and, with cache blocking, the input projection, dX and [dWx; dWh].
// Why not BLAS for these: per step, a BLAS call re-packs the weights every time, and where
// OpenBLAS is pinned to AVX2 it runs at half the FMA width; this kernel reaches the FMA peak on
// the recurrent shapes (benchmarks/RESULTS.md). float only; callers fall back to BLAS for
// double, on CPUs without AVX-512, or when disabled (test hook). With GemmPrecision::kBfloat16
// both operands are rounded to bfloat16 as they are packed and the products accumulate in
// float32 (cpu/packed_gemm_bf16.cpp; CPUs with AVX512-BF16).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "common/bf16.h"

namespace pylstm {

// The operands of a packed GEMM: float32, or rounded to bfloat16 (to nearest even) with float32
// accumulation. Parameters, outputs and everything outside the GEMMs stay float32.
enum class GemmPrecision { kFloat32, kBfloat16 };

// True when the CPU has AVX-512F and AVX512-BF16 (vdpbf16ps).
bool cpu_has_avx512_bf16();
// True when the bfloat16 GEMMs run on AMX tiles (the CPU has AMX-BF16, Linux granted the tile
// state, and the test hook has not switched it off); else on vdpbf16ps.
bool amx_bf16_enabled();
// Test hook: AMX off (the vdpbf16ps kernel) or back on. Returns the previous setting.
bool set_amx_bf16_enabled(bool on);
// Configures the calling thread's tiles as the AMX kernel uses them (0-7: 16 rows of 64 bytes);
// false where AMX is not available (the native benchmark's peak loop uses it).
bool amx_prepare_thread();

// True when the CPU supports AVX-512F and the kernel is enabled (see set_packed_gemm_enabled).
bool packed_gemm_enabled();
// Test hook: turn the kernel off (BLAS path) or back on. Returns the previous setting.
bool set_packed_gemm_enabled(bool on);

// Floats needed by pack_b for a K x N matrix: K * 16 * ceil(N / 16).
inline int64_t packed_b_size(int64_t K, int64_t N) { return K * 16 * ((N + 15) / 16); }

// A float32 panel of K rows of 16 (pack_b's) turned, in place, into its bfloat16 pairs (the
// first half of its room; cpu/packed_gemm_bf16.cpp).
void panel_to_bf16(float* panel, int64_t K);

// Packs the K x N matrix B into panels: panel p holds columns [16p, 16p+16), row k at
// out[p*K*16 + k*16 + c]; columns past N are zero. col(n) gives the address of column n's
// first element and row_stride the distance between consecutive k in that column, so any
// strided or transposed source (and the gate-sliced weights of cpu/sequence.cpp) can be packed.
// With kBfloat16 the panels hold bfloat16 pairs in the first half of the same room
// (cpu/packed_gemm_bf16.cpp has the layout), so packed sizes and panel offsets are the same:
// each panel is packed as float32, then converted in place while it is in cache.
template <class ColPtr>
void pack_b(int64_t K, int64_t N, ColPtr col, int64_t row_stride, float* out,
            GemmPrecision prec = GemmPrecision::kFloat32) {
  const int64_t panels = (N + 15) / 16;
  for (int64_t p = 0; p < panels; ++p) {
    float* dst = out + p * K * 16;
    const float* src[16];
    int w = 0;
    for (; w < 16 && p * 16 + w < N; ++w) src[w] = col(p * 16 + w);
    bool contiguous = w == 16;  // the panel's 16 columns side by side in every source row
    for (int c = 1; c < w && contiguous; ++c) contiguous = src[c] == src[0] + c;
    if (contiguous) {  // one 64-byte copy per k (the forward's weight slices)
      for (int64_t k = 0; k < K; ++k) std::memcpy(dst + k * 16, src[0] + k * row_stride, 64);
      if (prec == GemmPrecision::kBfloat16) panel_to_bf16(dst, K);
      continue;
    }
    // k outer: consecutive k reuse the cache lines of the previous one in either layout
    // (row_stride 1: 16 source rows read in step; row_stride > 1: one source row per k).
    for (int64_t k = 0; k < K; ++k) {
      float* d = dst + k * 16;
      for (int c = 0; c < w; ++c) d[c] = src[c][k * row_stride];
      for (int c = w; c < 16; ++c) d[c] = 0.0f;
    }
    if (prec == GemmPrecision::kBfloat16) panel_to_bf16(dst, K);
  }
}

// C (M x N, ldc) = A (M x K, lda) @ B, with B packed by pack_b. C is overwritten, or with
// accumulate, C += A @ B. With bias (N floats, not with accumulate), C = bias + A @ B: each
// C tile starts from the bias row while it is in L1 (the Affine layers' x @ W + b without a
// second pass over C).
void gemm_packed_b(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* Bp,
                   float* C, int64_t ldc, bool accumulate = false, const float* bias = nullptr,
                   GemmPrecision prec = GemmPrecision::kFloat32);

// C (M x N, ldc) = A @ B with B a row-major K x N matrix (ldb) read in place: no packing pass,
// for products whose B is used by too few rows of A to pay one back (a single step, a short
// sequence, the output layer at one row). The same micro-kernel and order of summation as
// gemm_packed_b, so the result is bitwise the packed call's. float32 operands only.
void gemm_rowmajor_b(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
                     int64_t ldb, float* C, int64_t ldc, bool accumulate = false,
                     const float* bias = nullptr);

// C (M x N, ldc) = A @ B^T, or with accumulate C += A @ B^T, for B a row-major N x K matrix
// (ldb) read in place: a few rows against a transposed weight matrix (the tied output layer of
// a generation step, x @ embed_W.T). Sixteen rows of B at a time are transposed in registers,
// so each C element sums its products in the order and blocks of gemm_packed_b's kernel: the
// packed call's bits.
void gemm_bt_rows(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
                  float* C, int64_t ldc, bool accumulate = false);

// dst[c][r] = src[r][c] for rows [r0, r1) and columns [c0, c1) of src (lds, ldd apart), in 16 x 16
// register blocks (transpose_cpu's float32 kernel, where packed_gemm_enabled()).
void transpose_block_avx512(int64_t r0, int64_t r1, int64_t c0, int64_t c1, const float* src, int64_t lds,
                            float* dst, int64_t ldd);

// C (M x N, ldc) = A^T @ B with A stored as a row-major K x M matrix (lda) and B packed by
// pack_b; C is overwritten, or with accumulate, C += A^T @ B. Used for the weight gradient [X | H_prev]^T dA.
void gemm_at_packed_b(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                      const float* Bp, float* C, int64_t ldc, bool accumulate = false,
                      const float* bias = nullptr, GemmPrecision prec = GemmPrecision::kFloat32);

// pack_b for a row-major source (row k of B at B + k*ldb), walking the rows once in order. With
// colsum, also colsum[c] += B[k][c] for k = 0, 1, ... in order, in double (the same rounding at
// any thread count, and no float32 error growing with K): the LSTM's db comes out of the
// passes that pack dA. colsum must hold 16 * ceil(N / 16) doubles (the padding gets zeros).
void pack_b_rows(int64_t K, int64_t N, const float* B, int64_t ldb, float* out,
                 double* colsum = nullptr, GemmPrecision prec = GemmPrecision::kFloat32);

// The drivers' first K block of a C tile starts from the bias: columns [col0, col0 + cols) of
// bias copied into `rows` rows of c (ldc apart), while the tile is about to be in L1.
inline void tile_from_bias(const float* bias, int64_t col0, int64_t cols, int64_t rows, float* c, int64_t ldc) {
  for (int64_t r = 0; r < rows; ++r) std::memcpy(c + r * ldc, bias + col0, sizeof(float) * size_t(cols));
}

// The drivers' slab of np panels from panel p0 of an N-column C: the column mask of its last
// panel (the kernels mask loads and stores with it).
inline uint16_t last_panel_mask(int64_t N, int64_t p0, int np) {
  const int64_t cols = std::min<int64_t>(16, N - (p0 + np - 1) * 16);
  return uint16_t((1u << cols) - 1u);
}

// Every driver's start of a C tile (`rows` rows at c, the slab at panel p0) in K block k0: from
// the bias in the first K block (tile_from_bias). Returns whether the kernel adds onto C.
inline bool start_tile(const float* bias, bool accumulate, int64_t k0, int64_t N, int64_t p0, int np,
                       int64_t rows, float* c, int64_t ldc) {
  if (bias && k0 == 0) {
    tile_from_bias(bias, p0 * 16, std::min<int64_t>(int64_t(np) * 16, N - p0 * 16), rows, c, ldc);
    return true;
  }
  return accumulate || k0 > 0;
}

// Every driver's walk over a row chunk [m0, m1): tile(p0, r0) for each slab p0 (pstep panels)
// and row block r0 (rstep rows), the panels in blocks of block_panels. Within a block, the
// slabs outer (each slab hit in cache by every row block), or with rows_outer the row blocks
// outer (a short K: each row block writes its rows of C in runs, cpu/packed_gemm.cpp). The
// order changes no sum.
template <class Tile>
inline void walk_tiles(int64_t m0, int64_t m1, int64_t panels, int64_t block_panels, bool rows_outer,
                       int64_t pstep, int64_t rstep, Tile&& tile) {
  for (int64_t q0 = 0; q0 < panels; q0 += block_panels) {
    const int64_t q1 = std::min(panels, q0 + block_panels);
    if (rows_outer) {
      for (int64_t r0 = m0; r0 < m1; r0 += rstep)
        for (int64_t p0 = q0; p0 < q1; p0 += pstep) tile(p0, r0);
    } else {
      for (int64_t p0 = q0; p0 < q1; p0 += pstep)
        for (int64_t r0 = m0; r0 < m1; r0 += rstep) tile(p0, r0);
    }
  }
}

// Both drivers' K = 0: an empty sum, C = 0 or the bias (unchanged when accumulating, where the
// bias is not used). Returns whether K was 0.
inline bool empty_sum(int64_t M, int64_t N, int64_t K, float* C, int64_t ldc, bool accumulate, const float* bias) {
  if (K != 0) return false;
  for (int64_t r = 0; r < M && !accumulate; ++r) {
    if (bias) std::memcpy(C + r * ldc, bias, sizeof(float) * size_t(N));
    else std::memset(C + r * ldc, 0, sizeof(float) * size_t(N));
  }
  return true;
}

// The bfloat16 driver behind gemm_packed_b (TA false) and gemm_at_packed_b (TA true).
template <bool TA>
void gemm_bf16_driver(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const uint16_t* B,
                      float* C, int64_t ldc, bool accumulate, const float* bias);

}  // namespace pylstm
