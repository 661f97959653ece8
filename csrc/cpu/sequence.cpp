// The fused recurrent sequence driver on the CPU, written once for every cell of cells/
// (declared in cpu/api.h; called by bind/cpu.cpp and the native benchmark). Structure
// (ARCHITECTURE.md): one input-projection GEMM over all N*T rows; per step one recurrent GEMM
// and one fused pointwise pass (the cell's forward); backward with one pointwise pass (the
// cell's backward) and one GEMM per step, then one merged weight-gradient GEMM, one dX GEMM and
// db as a column sum.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "cpu/blas.h"
#include "cells/registry.h"
#include "cpu/packed_gemm.h"
#include "cpu/api.h"
#include "cpu/threads.h"

namespace pylstm {

namespace {

// Threads own slices of the H hidden units (all G gate columns of each unit), aligned to 16
// elements (one 64-byte line of floats) so that the GEMM column blocks start on cache lines.
constexpr int64_t kSliceAlign = 16;

// Rows of dA packed at a time for the weight-gradient GEMM (seq_backward_cpu): the kernel's
// own K block (cpu/packed_gemm.cpp), so the chunked GEMM rounds exactly as one call over all rows.
constexpr int64_t kPackRows = 1024;

// Rows per BLAS weight-gradient GEMM: all rows in float64 (its error is far inside 1e-9); in
// float32, chunks of 128 rows or more, at most 16 of them (the CUDA driver's rule).
template <class T>
int64_t blas_weight_grad_rows(int64_t R) {
  if (sizeof(T) == 8) return R;
  const int64_t per = (R + 15) / 16;
  return std::max<int64_t>(128, (per + 127) / 128 * 128);
}

// Below this much work per step (N*G*H*(D+H) multiply-adds; benchmarks/RESULTS.md) waking a
// second thread costs more than it saves; those calls run on the caller alone.
constexpr int64_t kMinParallelWork = 1 << 16;

// Calls of one step, or of at most this many rows (N*T), read the weights in place
// (weights_in_place).
constexpr int64_t kInPlaceMaxRows = 16;

int threads_for(const SeqShape& s, int gates) {
  const int nt = get_num_threads();
  if (s.N * gates * s.H * (s.D + s.H) < kMinParallelWork) return 1;
  const int64_t slices = (s.H + kSliceAlign - 1) / kSliceAlign;
  return int(std::min<int64_t>(nt, slices));
}


std::atomic<int> g_schedule{int(ForwardSchedule::kAuto)};

// Size of the last-level cache from sysfs (cpuid-based sysconf reports the host's total in some
// virtual machines, ten times the guest's share); 16 MB when unknown.
int64_t last_level_cache_bytes() {
  static const int64_t bytes = [] {
    int64_t best = 0;
    for (int i = 0; i < 8; ++i) {
      const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i);
      std::ifstream level(dir + "/level"), size(dir + "/size");
      int lv = 0;
      std::string sz;
      if (!(level >> lv) || !(size >> sz) || lv < 2 || sz.empty()) continue;
      int64_t v = std::atoll(sz.c_str());
      if (sz.back() == 'K') v <<= 10;
      if (sz.back() == 'M') v <<= 20;
      best = std::max(best, v);
    }
    return best > 0 ? best : int64_t(16) << 20;
  }();
  return bytes;
}

// The forward pass's two schedules for the packed-weight kernel (seq_forward_cpu). The step
// projection keeps the (N, T, G*H) pre-activations out of memory, paid for by reading each
// thread's packed Wx slice once per step instead of once per call: it wins with at least 8 rows
// per step and while the packed [Wx; Wh] (all threads' slices) takes at most 40% of the
// last-level cache (the measurements behind the rule: benchmarks/RESULTS.md).
bool step_projection(const SeqShape& s, int gates) {
  const int mode = g_schedule.load();
  if (mode != int(ForwardSchedule::kAuto)) return mode == int(ForwardSchedule::kStepProjection);
  const int64_t weight_bytes = (s.D + s.H) * gates * s.H * int64_t(sizeof(float));
  return s.N >= 8 && weight_bytes * 5 <= last_level_cache_bytes() * 2;
}

std::atomic<int> g_weight_reading{int(WeightReading::kAuto)};

// Whether the float32 forward reads Wx and Wh in place (row-major, gemm_rowmajor_b) instead of
// packing each thread's slice into panels first. Packing reads and writes the weights once per
// call so that every later pass reads contiguous panels; a call whose GEMMs pass over the
// weights only a few times (a single step, a short sequence, as in generation and streaming)
// spends more on the packing than it saves. Past a few rows per step the panels win: their
// contiguous stream prefetches, where the in-place rows lie G*H floats apart (the crossover is
// in benchmarks/RESULTS.md). Both
// give the same bits. bfloat16 rounds the weights as it packs them, so it always packs.
bool weights_in_place(const SeqShape& s, bool bf16) {
  if (bf16) return false;
  const int mode = g_weight_reading.load();
  if (mode != int(WeightReading::kAuto)) return mode == int(WeightReading::kInPlace);
  return s.T == 1 || s.N * s.T <= kInPlaceMaxRows;
}

// --- Pointwise rows -----------------------------------------------------------------------
// One row n of one step over a slice of hsz hidden units, through the cell's forward/backward
// (CellCall: every cell takes what it declares). The bodies are templates inlined into per-ISA
// clones (AVX-512, AVX2+FMA, baseline x86-64) picked at load time, so the cell math vectorizes
// to the widest registers the CPU has without building for one machine.
//   Gate k's pre-activation of unit jj is p[k*ps + jj] (+ z[k*hsz + jj] when z is given)
//   + b[k*H + jj]: p is the slice's part of a projection row (A, gate stride H) or of the
//   step's GEMM result (Z, gate stride hsz); z the recurrent GEMM result when it is apart (the
//   BLAS path, and cells with split blocks). For a split block (the last kSplit of a cell
//   whose recurrent part stays apart) the recurrent part goes to the cell separately: it is
//   z's block when z is given, else p's (Z holds it), and then the input part is sx's
//   (gate stride sxs).
//   hp: h_{t-1} of the slice (cells with split blocks); cp: c_{t-1}; c_out, h_out: outputs (cp
//   may equal c_out; both unused without a cell state); g: where the kS saved activations go
//   when training (gate stride H; may equal p); P: the cell's per-unit parameters at the slice
//   start (row stride H; unused without them).
template <class Cell, class T, bool kSave, bool kZ>
__attribute__((always_inline)) inline void fwd_row_body(int64_t H, int64_t hsz, const T* p,
                                                        int64_t ps, const T* z, const T* sx,
                                                        int64_t sxs, const T* b, const T* hp,
                                                        const T* cp, T* c_out, T* h_out, T* g,
                                                        const T* P) {
  using Call = CellCall<Cell>;
  constexpr int G = Call::kG, kSplit = Call::kSplit, kShared = G - kSplit;
#pragma omp simd
  for (int64_t jj = 0; jj < hsz; ++jj) {
    T pre[G], hsplit[Call::kSp] = {}, pv[Call::kP] = {};
#pragma GCC unroll 16  // (the gate loops must be gone before the jj loop is vectorized)
    for (int k = 0; k < kShared; ++k) {  // (x-part + h-part) + bias
      pre[k] = p[k * ps + jj];
      if constexpr (kZ) pre[k] += z[k * hsz + jj];
      pre[k] += b[k * H + jj];
    }
#pragma GCC unroll 4
    for (int k = kShared; k < G; ++k) {  // x-part + bias; the h-part apart
      if constexpr (kZ) {
        pre[k] = p[k * ps + jj] + b[k * H + jj];
        hsplit[k - kShared] = z[k * hsz + jj];
      } else {
        pre[k] = sx[(k - kShared) * sxs + jj] + b[k * H + jj];
        hsplit[k - kShared] = p[k * ps + jj];
      }
    }
#pragma GCC unroll 4
    for (int k = 0; k < Cell::kUnitParams; ++k) pv[k] = P[k * H + jj];
    T act[Call::kS], c, h;
    Call::forward(pre, hsplit, kSplit > 0 ? hp[jj] : T(0), Cell::kHasCellState ? cp[jj] : T(0),
                  pv, act, c, h);
    if constexpr (kSave) {  // training: keep the activations for backward
#pragma GCC unroll 16
      for (int k = 0; k < Call::kS; ++k) g[k * H + jj] = act[k];
    }
    if constexpr (Cell::kHasCellState) c_out[jj] = c;
    h_out[jj] = h;
  }
}

//   gt: saved activations at the slice start (k at gt[k*H + jj]); c, cp: c_t and c_{t-1};
//   hp: h_{t-1} (cells with split blocks); dh_up: dhs row; dhc, dcc: carried dh and dc (read,
//   then overwritten: dcc with dc_{t-1}, dhc with the direct part of dh_{t-1} for a cell with
//   one, which the recurrent GEMM then adds to); da: dA row at the slice start (k at
//   da[k*H + jj], kS blocks). c, cp, dcc are unused without a cell state. P: per-unit
//   parameters as in fwd_row_body; dpacc: this thread's sums of their gradient, in double
//   (row k at dpacc[k*hsz + jj]); both unused without them.
template <class Cell, class T>
__attribute__((always_inline)) inline void bwd_row_body(int64_t H, int64_t hsz, const T* gt,
                                                        const T* c, const T* cp, const T* hp,
                                                        const T* dh_up, T* dhc, T* dcc, T* da,
                                                        const T* P, double* dpacc) {
  using Call = CellCall<Cell>;
  constexpr int kS = Call::kS;
  constexpr bool kC = Cell::kHasCellState;
#pragma omp simd
  for (int64_t jj = 0; jj < hsz; ++jj) {
    T act[kS], d[kS], dcp, dhd, pv[Call::kP] = {};
#pragma GCC unroll 16
    for (int k = 0; k < kS; ++k) act[k] = gt[k * H + jj];
#pragma GCC unroll 4
    for (int k = 0; k < Cell::kUnitParams; ++k) pv[k] = P[k * H + jj];
    Call::backward(act, kC ? c[jj] : T(0), kC ? cp[jj] : T(0), Call::kSplit > 0 ? hp[jj] : T(0),
                   pv, dh_up[jj] + dhc[jj], kC ? dcc[jj] : T(0), d, dcp, dhd);
#pragma GCC unroll 16
    for (int k = 0; k < kS; ++k) da[k * H + jj] = d[k];
    if constexpr (Cell::kUnitParams > 0) {
      T dp[Cell::kUnitParams];
      Cell::param_grads(act, kC ? c[jj] : T(0), kC ? cp[jj] : T(0), d, dp);
#pragma GCC unroll 4
      for (int k = 0; k < Cell::kUnitParams; ++k) dpacc[k * hsz + jj] += double(dp[k]);
    }
    if constexpr (kC) dcc[jj] = dcp;
    if constexpr (Call::kDirectH) dhc[jj] = dhd;
  }
}

// A gated cell's (cells/gru.h, GruBeforeCell) two phases of a step, forward and backward, over
// one row of the slice. Forward phase 1 (gate_row): z and r from p (+ z) + b as in
// fwd_row_body, into zr (the row's Z blocks 0 and 1, overwriting what they held) and g when
// training; rh = r * h_prev into rh_out. Phase 2 (out_row): n from pn (+ zn) + bn and z from
// zr; h and, training, n into g's block 2.
template <class Cell, class T, bool kZ>
__attribute__((always_inline)) inline void gate_row_body(int64_t H, int64_t hsz, const T* p,
                                                         int64_t ps, const T* z, const T* b,
                                                         const T* hp, T* zr, T* rh_out, T* g) {
  if constexpr (CellCall<Cell>::kGated > 0) {
#pragma omp simd
    for (int64_t jj = 0; jj < hsz; ++jj) {
      T pre[2], act[3], rh;
#pragma GCC unroll 2
      for (int k = 0; k < 2; ++k) {
        pre[k] = p[k * ps + jj];
        if constexpr (kZ) pre[k] += z[k * hsz + jj];
        pre[k] += b[k * H + jj];
      }
      Cell::forward_gate(pre, hp[jj], act, rh);
      zr[jj] = act[0];
      zr[hsz + jj] = act[1];
      rh_out[jj] = rh;
      if (g) {
        g[jj] = act[0];
        g[H + jj] = act[1];
      }
    }
  }
}

template <class Cell, class T, bool kZ>
__attribute__((always_inline)) inline void out_row_body(int64_t H, int64_t hsz, const T* pn,
                                                        const T* zn, const T* bn, const T* hp,
                                                        const T* zr, T* h_out, T* g) {
  if constexpr (CellCall<Cell>::kGated > 0) {
#pragma omp simd
    for (int64_t jj = 0; jj < hsz; ++jj) {
      T act[3] = {zr[jj], zr[hsz + jj], T(0)}, h;
      T pre = pn[jj];
      if constexpr (kZ) pre += zn[jj];
      Cell::forward_out(pre + bn[jj], hp[jj], act, h);
      h_out[jj] = h;
      if (g) g[2 * H + jj] = act[2];
    }
  }
}

// Backward phase 1 (bwd_out_row): dz, dn into da's blocks 0 and 2 from dh = dh_up + dhc, and
// the direct part of dh_{t-1} into dhc. Phase 2 (bwd_gate_row): dr into da's block 1 from drh
// (this row's dA_n Wh_n^T), and drh's part of dh_{t-1} added to dhc.
template <class Cell, class T>
__attribute__((always_inline)) inline void bwd_out_row_body(int64_t H, int64_t hsz, const T* gt,
                                                            const T* hp, const T* dh_up, T* dhc,
                                                            T* da) {
  if constexpr (CellCall<Cell>::kGated > 0) {
#pragma omp simd
    for (int64_t jj = 0; jj < hsz; ++jj) {
      const T act[3] = {gt[jj], gt[H + jj], gt[2 * H + jj]};
      T d[3] = {}, direct;
      Cell::backward_out(act, hp[jj], dh_up[jj] + dhc[jj], d, direct);
      da[jj] = d[0];
      da[2 * H + jj] = d[2];
      dhc[jj] = direct;
    }
  }
}

template <class Cell, class T>
__attribute__((always_inline)) inline void bwd_gate_row_body(int64_t H, int64_t hsz, const T* gt,
                                                             const T* hp, const T* drh, T* dhc,
                                                             T* da) {
  if constexpr (CellCall<Cell>::kGated > 0) {
#pragma omp simd
    for (int64_t jj = 0; jj < hsz; ++jj) {
      const T act[3] = {gt[jj], gt[H + jj], gt[2 * H + jj]};
      T d[3] = {}, dgate;
      Cell::backward_gate(act, hp[jj], drh[jj], d, dgate);
      da[H + jj] = d[1];
      dhc[jj] += dgate;
    }
  }
}

// Non-template entry points per (cell, dtype), each with its per-ISA clones; the cell is a tag.
#define PYLSTM_ROW_FUNCS(Cell, T)                                                               \
  PYLSTM_CLONES void fwd_row(Cell, int64_t H, int64_t hsz, const T* p, int64_t ps, const T* z, \
                             const T* sx, int64_t sxs, const T* b, const T* hp, const T* cp,    \
                             T* c_out, T* h_out, T* g, const T* P) {                            \
    if (g && z) fwd_row_body<Cell, T, true, true>(H, hsz, p, ps, z, sx, sxs, b, hp, cp, c_out, h_out, g, P);   \
    else if (g) fwd_row_body<Cell, T, true, false>(H, hsz, p, ps, z, sx, sxs, b, hp, cp, c_out, h_out, g, P);  \
    else if (z) fwd_row_body<Cell, T, false, true>(H, hsz, p, ps, z, sx, sxs, b, hp, cp, c_out, h_out, g, P);  \
    else fwd_row_body<Cell, T, false, false>(H, hsz, p, ps, z, sx, sxs, b, hp, cp, c_out, h_out, g, P);        \
  }                                                                                             \
  PYLSTM_CLONES void bwd_row(Cell, int64_t H, int64_t hsz, const T* gt, const T* c,             \
                             const T* cp, const T* hp, const T* dh_up, T* dhc, T* dcc, T* da,   \
                             const T* P, double* dpacc) {                                       \
    bwd_row_body<Cell, T>(H, hsz, gt, c, cp, hp, dh_up, dhc, dcc, da, P, dpacc);                \
  }                                                                                             \
  PYLSTM_CLONES void gate_row(Cell, int64_t H, int64_t hsz, const T* p, int64_t ps, const T* z, \
                              const T* b, const T* hp, T* zr, T* rh_out, T* g) {                \
    if (z) gate_row_body<Cell, T, true>(H, hsz, p, ps, z, b, hp, zr, rh_out, g);                \
    else gate_row_body<Cell, T, false>(H, hsz, p, ps, z, b, hp, zr, rh_out, g);                 \
  }                                                                                             \
  PYLSTM_CLONES void out_row(Cell, int64_t H, int64_t hsz, const T* pn, const T* zn,            \
                             const T* bn, const T* hp, const T* zr, T* h_out, T* g) {           \
    if (zn) out_row_body<Cell, T, true>(H, hsz, pn, zn, bn, hp, zr, h_out, g);                  \
    else out_row_body<Cell, T, false>(H, hsz, pn, zn, bn, hp, zr, h_out, g);                    \
  }                                                                                             \
  PYLSTM_CLONES void bwd_out_row(Cell, int64_t H, int64_t hsz, const T* gt, const T* hp,        \
                                 const T* dh_up, T* dhc, T* da) {                               \
    bwd_out_row_body<Cell, T>(H, hsz, gt, hp, dh_up, dhc, da);                                  \
  }                                                                                             \
  PYLSTM_CLONES void bwd_gate_row(Cell, int64_t H, int64_t hsz, const T* gt, const T* hp,       \
                                  const T* drh, T* dhc, T* da) {                                \
    bwd_gate_row_body<Cell, T>(H, hsz, gt, hp, drh, dhc, da);                                   \
  }
#define PYLSTM_ROW_FUNCS_ALL(Cell, name) PYLSTM_ROW_FUNCS(Cell, float) PYLSTM_ROW_FUNCS(Cell, double)
PYLSTM_FOR_EACH_CELL(PYLSTM_ROW_FUNCS_ALL)
#undef PYLSTM_ROW_FUNCS_ALL
#undef PYLSTM_ROW_FUNCS

// Per-thread scratch reused across calls (the pool's threads live as long as the process);
// kTag tells apart buffers one thread holds at once.
template <class T, int kTag = 0>
T* thread_scratch(size_t n) {
  thread_local std::vector<T> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

// p + off, or nullptr for an absent array (no arithmetic on a null pointer).
template <class P>
P* offset(P* p, int64_t off) {
  return p ? p + off : nullptr;
}

// The packed GEMMs' operand precision; bfloat16 needs float32 on the packed kernel with
// AVX512-BF16 (the bindings check first, with the reason).
template <class T>
GemmPrecision gemm_precision(bool bf16) {
  if (!bf16) return GemmPrecision::kFloat32;
  if (!std::is_same<T, float>::value || !packed_gemm_enabled() || !cpu_has_avx512_bf16()) {
    throw std::invalid_argument("bf16: bfloat16 GEMMs need float32 arrays, the packed kernel and AVX512-BF16");
  }
  return GemmPrecision::kBfloat16;
}

// With lengths: for each time index t, the rows a step covers, [0, 1 + the last row still
// running at t) (every running row, and none past them: with lengths sorted longest first, no
// finished row at all). nullptr without lengths (every row, every step). Kept per calling
// thread (nothing allocates inside a run).
const int64_t* step_rows(const SeqWalk& w, int64_t N) {
  if (!w.len) return nullptr;
  int64_t* m = thread_scratch<int64_t, 6>(size_t(w.T));
  std::fill(m, m + w.T, int64_t(0));
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t t = 0; t < w.length(n); ++t) m[t] = n + 1;
  }
  return m;
}

}  // namespace

ForwardSchedule set_forward_schedule(ForwardSchedule mode) {
  return ForwardSchedule(g_schedule.exchange(int(mode)));
}

WeightReading set_weight_reading(WeightReading w) { return WeightReading(g_weight_reading.exchange(int(w))); }
WeightReading get_weight_reading() { return WeightReading(g_weight_reading.load()); }

template <class Cell, class T>
int64_t seq_forward_cpu_workspace_size(const SeqShape& s, bool save) {
  if (!save && std::is_same<T, float>::value && packed_gemm_enabled() &&
      step_projection(s, Cell::kGates)) {
    return (Cell::kHasCellState ? s.N * s.H : 0) + (CellCall<Cell>::kGated > 0 ? s.N * s.H : 0);
  }
  return seq_forward_workspace_size<Cell>(s, save);
}

template <class Cell, class T>
void seq_forward_cpu(const ForwardArgs<T>& a) {
  using Call = CellCall<Cell>;
  constexpr int kG = Cell::kGates, kSplit = Call::kSplit, kShared = kG - kSplit, kGated = Call::kGated;
  constexpr bool kC = Cell::kHasCellState;
  const SeqShape& s = a.s;
  // G: the gate columns of Wx, Wh, b; GS: a row of the pre-activations / saved activations
  // (kS blocks: a cell with split blocks saves more than it has gates).
  const int64_t N = s.N, Tn = s.T, D = s.D, H = s.H, G = kG * H, GS = Call::kS * H;
  const T *xs = a.xs, *h0 = a.h0, *c0 = kC ? a.c0 : nullptr, *Wx = a.Wx, *Wh = a.Wh, *b = a.b;
  T *hs = a.hs, *hT = a.hT, *cT = kC ? a.cT : nullptr, *gates = a.gates;
  T* cs = kC ? a.cs : nullptr;
  const bool save = gates != nullptr;
  // GEMMs on the packed-weight kernel (float with AVX-512) or BLAS (double, older CPUs).
  const bool packed = std::is_same<T, float>::value && packed_gemm_enabled();
  const GemmPrecision prec = gemm_precision<T>(a.bf16);
  // A forward-only call given only the step projection's scratch must take that schedule.
  const int64_t full_work = seq_forward_workspace_size<Cell>(s, false);
  const bool small_work = !save && a.work_size >= 0 && a.work_size < full_work;
  if (small_work && (!packed || a.work_size < (kC ? N * H : 0) + (kGated ? N * H : 0))) {
    throw std::invalid_argument("work: " + std::to_string(a.work_size) +
                                " elements are too few for this forward-only call (needs " +
                                std::to_string(full_work) + ")");
  }
  // Two schedules of the same GEMMs (see step_projection):
  //  - projection first: one GEMM over all N*T rows into A (the gates buffer when saving, else
  //    the workspace; rows of GS), then per step the slice of A_t copied into Z and Z +=
  //    h_{t-1} @ Wh[:, slice] (with BLAS: Z = h_{t-1} @ Wh[:, slice] and the pointwise pass adds
  //    A, Z and b);
  //  - step projection: per step Z = x_t @ Wx[:, slice] before the step's barrier, then
  //    Z += h_{t-1} @ Wh[:, slice]; the (N, T, G*H) pre-activations never exist.
  // A split block's Z columns start from zero instead, so they hold its recurrent part alone;
  // its input part stays in A (projection first) or moves to Xs (step projection).
  if (kGated && save && (a.work == nullptr || (a.work_size >= 0 && a.work_size < N * H))) {
    throw std::invalid_argument("work: a training forward of this cell needs " + std::to_string(N * H) +
                                " elements of workspace (seq_forward_workspace_size)");
  }
  const bool step_proj = packed && (step_projection(s, kG) || small_work);
  const bool in_place = packed && weights_in_place(s, a.bf16);
  T* A = step_proj ? nullptr : save ? gates : a.work;
  // forward-only with a cell state: running c, (N, H), after A when there is one
  T* c_run = save || !kC ? nullptr : step_proj ? a.work : a.work + N * Tn * GS;
  // A gated cell's r * h_{t-1} of every unit, (N, H), shared by the threads: after the rest.
  T* RH = !kGated ? nullptr
                  : a.work + (save || step_proj ? 0 : N * Tn * GS) + (save || !kC ? 0 : N * H);
  const SeqWalk walk(s, a.lengths, a.reverse);
  const int64_t* rows_at = step_rows(walk, N);
  // Reversed with lengths, a sequence shorter than the longest starts mid-walk, and the step's
  // GEMM reads its h_{t+1} row from hs: h0 waits there (in the padding at t = L_n) until the
  // walk is over.
  const bool stash = walk.reverse && walk.len && h0;

  parallel_run(threads_for(s, kG), [&](const Team& team) {
    int64_t j0, j1;  // this thread's hidden units; it alone reads and writes their columns
    team.split(H, kSliceAlign, j0, j1);
    const int64_t hsz = j1 - j0;
    if (hsz == 0) {
      for (int64_t st = 0; st < walk.steps; ++st) {  // the loop's arrive/wait pairs (and a
        if (kGated) team.barrier();                  // gated cell's second phase)
        if (st + 1 < walk.steps) team.barrier();
      }
      if (stash) team.barrier();
      return;
    }
    if (walk.len) {  // this slice of the padding: zero outputs (and h0 where it waits)
      for (int64_t n = 0; n < N; ++n) {
        for (int64_t t = walk.length(n); t < Tn; ++t) {
          const int64_t row = n * Tn + t;
          if (stash && t == walk.length(n) && t < walk.steps) {
            std::memcpy(hs + row * H + j0, h0 + n * H + j0, sizeof(T) * hsz);
          } else {
            std::fill(hs + row * H + j0, hs + row * H + j1, T(0));
          }
          if (kC && save) std::fill(cs + row * H + j0, cs + row * H + j1, T(0));
        }
      }
    }
    // The slice's columns of Wh (and, for the step projection, of Wx) side by side, (H,
    // G*hsz), so each step is one GEMM into the contiguous Z (N, G*hsz): packed into 16-column
    // panels for the kernel, else row-major for BLAS. Plus zeros standing in for absent h0/c0,
    // and Xs for the split blocks' input part under the step projection.
    const int64_t hw = kG * hsz;
    // A gated cell's first GEMM covers the other blocks (hw1 columns), its second the gated
    // ones, packed apart (the gated block need not start on a 16-column panel).
    const int64_t hw1 = (kG - kGated) * hsz;
    const int64_t wsize1 = packed && !in_place ? packed_b_size(H, hw1) : 0;
    const int64_t wsize = in_place ? 0 : packed ? wsize1 + (kGated ? packed_b_size(H, hw - hw1) : 0) : H * hw;
    const int64_t xsize = packed && !in_place ? (step_proj ? packed_b_size(D, hw) : packed_b_size(D, hsz)) : 0;
    const int64_t xssize = step_proj ? N * kSplit * hsz : 0;
    T* scratch = thread_scratch<T>(size_t(wsize + xsize + N * hw + hw + xssize));
    T* Whp = scratch;
    T* Wxp = Whp + wsize;
    T* Z = Wxp + xsize;
    T* zeros = Z + N * hw;
    T* Xs = zeros + hw;
    std::fill(zeros, zeros + hw, T(0));
    const T* Pj = offset(a.P, j0);  // this slice's per-unit parameters
    auto slice_col = [&](const T* W, int64_t n) { return W + (n / hsz) * H + j0 + n % hsz; };
    // C (ldc hw) (+)= Am @ the slice's columns of gate blocks [k0, k1) of W (K rows): from the
    // packed panels Wp, or read in place, one block at a time (the same bits).
    auto slice_gemm = [&](int64_t M, const auto* Am, int64_t lda, int64_t K, const auto* W, const auto* Wp,
                          int k0, int k1, auto* C, bool acc) {
      if (in_place) {
        for (int k = k0; k < k1; ++k) {
          gemm_rowmajor_b(M, hsz, K, Am, lda, W + k * H + j0, G, C + (k - k0) * hsz, hw, acc);
        }
      } else {
        gemm_packed_b(M, (k1 - k0) * hsz, K, Am, lda, Wp, C, hw, acc, nullptr, prec);
      }
    };
    if constexpr (std::is_same<T, float>::value) {
      if (in_place && !step_proj) {  // 1. (below) with Wx read in place
        for (int k = 0; k < kG; ++k) {
          gemm_rowmajor_b(N * Tn, hsz, D, xs, D, Wx + k * H + j0, G, A + k * H + j0, GS);
        }
      } else if (packed && !in_place) {
        pack_b(H, hw1, [&](int64_t n) { return slice_col(Wh, n); }, G, Whp, prec);
        if (kGated) pack_b(H, hw - hw1, [&](int64_t n) { return slice_col(Wh, hw1 + n); }, G, Whp + wsize1, prec);
        if (step_proj) {
          pack_b(D, hw, [&](int64_t n) { return slice_col(Wx, n); }, G, Wxp, prec);
        } else {
          // 1. Input projection of all N*T rows for this slice's gate column blocks (the bias
          //    is added in the pointwise pass), one block at a time through one packed buffer
          //    (1/G of the scratch of all; hsz < 16 pads each block to 16 columns).
          //    With lengths, each sequence's valid rows alone (the slice's packed block stays
          //    in cache across the calls; each output's sum is the same), and zeros in the
          //    padding rows, which nothing reads.
          for (int k = 0; k < kG; ++k) {
            pack_b(D, hsz, [&](int64_t n) { return Wx + k * H + j0 + n; }, G, Wxp, prec);
            if (!walk.len) {
              gemm_packed_b(N * Tn, hsz, D, xs, D, Wxp, A + k * H + j0, GS, false, nullptr, prec);
              continue;
            }
            for (int64_t n = 0; n < N; ++n) {
              const int64_t Ln = walk.length(n);
              T* an = A + n * Tn * GS + k * H + j0;
              gemm_packed_b(Ln, hsz, D, xs + n * Tn * D, D, Wxp, an, GS, false, nullptr, prec);
              for (int64_t t = Ln; t < Tn; ++t) std::fill(an + t * GS, an + t * GS + hsz, T(0));
            }
          }
        }
      }
    }
    if (!packed) {
      for (int k = 0; k < kG; ++k) {  // 1., on BLAS
        gemm(false, false, int(N * Tn), int(hsz), int(D), T(1), xs, int(D), Wx + k * H + j0,
             int(G), T(0), A + k * H + j0, int(GS));
      }
      for (int64_t r = 0; r < H; ++r) {
        for (int k = 0; k < kG; ++k) {
          std::memcpy(Whp + r * hw + k * hsz, Wh + r * G + k * H + j0, sizeof(T) * hsz);
        }
      }
    }
    if (c_run) {
      for (int64_t n = 0; n < N; ++n) {
        for (int64_t j = j0; j < j1; ++j) c_run[n * H + j] = c0 ? c0[n * H + j] : T(0);
      }
    }
    // The recurrent input of row n at step t: h0's row (or zeros) at its first step.
    auto hp_of = [&](int64_t n, int64_t t) -> const T* {
      if (walk.first(n, t)) return h0 ? h0 + n * H + j0 : zeros;
      return hs + (n * Tn + walk.prev(t)) * H + j0;
    };
    int token = 0;
    for (int64_t st = 0; st < walk.steps; ++st) {
      const int64_t t = walk.at(st), M = rows_at ? rows_at[t] : N;  // rows [0, M) take part
      const T* h_prev = st > 0 ? hs + walk.prev(t) * H : h0;
      const int64_t ld_h = st > 0 ? Tn * H : H;
      if constexpr (std::is_same<T, float>::value) {
        // Z = the x-part of this step's pre-activations, computed (step projection) or copied
        // from A (projection first). It needs no other thread's work, so it runs between this
        // thread's arrival (its h_{t-1} written) and the wait: a thread that is early does it
        // while the other catches up. The h-part is then accumulated onto it in both schedules:
        // the kernel adds its partial sums to C every 128 products, so starting from the
        // x-part in C is what makes the two schedules round identically.
        if (step_proj) {
          slice_gemm(M, xs + t * D, Tn * D, D, Wx, Wxp, 0, kG, Z, false);
          for (int64_t n = 0; n < M; ++n) {  // split blocks: their x-part to Xs
            for (int k = kShared; k < kG; ++k) {
              T* zk = Z + n * hw + k * hsz;
              std::memcpy(Xs + (n * kSplit + k - kShared) * hsz, zk, sizeof(T) * hsz);
              std::fill(zk, zk + hsz, T(0));
            }
          }
        } else if (packed) {
          for (int64_t n = 0; n < M; ++n) {
            const T* ar = A + (n * Tn + t) * GS + j0;
            for (int k = 0; k < kShared; ++k) std::memcpy(Z + n * hw + k * hsz, ar + k * H, sizeof(T) * hsz);
            std::fill(Z + n * hw + kShared * hsz, Z + (n + 1) * hw, T(0));
          }
        }
      }
      if (st > 0) team.wait(token);  // h_{t-1} complete before this step's GEMM reads it
      if constexpr (kGated > 0) {
        // A gated cell's step in two phases: z, r and rh = r * h_{t-1} (GEMM over the other
        // blocks, then phase 1), every thread's rh written (a barrier), then n's GEMM over rh
        // and phase 2. Z's z and r blocks hold the activations between the phases.
        if (h_prev) {
          if constexpr (std::is_same<T, float>::value) {
            if (packed) slice_gemm(M, h_prev, ld_h, H, Wh, Whp, 0, kG - kGated, Z, true);
          }
          if (!packed) {
            gemm(false, false, int(M), int(hw1), int(H), T(1), h_prev, int(ld_h), Whp, int(hw), T(0), Z,
                 int(hw));
          }
        }
        for (int64_t n = 0; n < M; ++n) {
          if (!walk.active(n, t)) continue;
          const int64_t row = n * Tn + t;
          const T* hp = hp_of(n, t);
          T* g = save ? gates + row * GS + j0 : nullptr;
          if (packed) {
            gate_row(Cell{}, H, hsz, Z + n * hw, hsz, nullptr, b + j0, hp, Z + n * hw, RH + n * H + j0, g);
          } else {
            gate_row(Cell{}, H, hsz, A + row * GS + j0, H, h_prev ? Z + n * hw : zeros, b + j0, hp,
                     Z + n * hw, RH + n * H + j0, g);
          }
        }
        team.barrier();  // every unit's rh written before n's GEMM reads it
        if (h_prev) {
          if constexpr (std::is_same<T, float>::value) {
            if (packed) slice_gemm(M, RH, H, H, Wh, Whp + wsize1, kG - kGated, kG, Z + hw1, true);
          }
          if (!packed) {
            gemm(false, false, int(M), int(hw - hw1), int(H), T(1), RH, int(H), Whp + hw1, int(hw), T(0),
                 Z + hw1, int(hw));
          }
        }
        for (int64_t n = 0; n < M; ++n) {
          if (!walk.active(n, t)) continue;
          const int64_t row = n * Tn + t;
          const T* hp = hp_of(n, t);
          T* g = save ? gates + row * GS + j0 : nullptr;
          const T* bn = b + j0 + (kG - 1) * H;
          if (packed) {
            out_row(Cell{}, H, hsz, Z + n * hw + hw1, nullptr, bn, hp, Z + n * hw, hs + row * H + j0, g);
          } else {
            out_row(Cell{}, H, hsz, A + row * GS + j0 + (kG - 1) * H, h_prev ? Z + n * hw + hw1 : zeros, bn,
                    hp, Z + n * hw, hs + row * H + j0, g);
          }
        }
        if (st + 1 < walk.steps) token = team.arrive();
        continue;
      }
      // 2a. Recurrent GEMM for this slice: Z (+)= h_{t-1} @ Wh[:, slice] (none at t = 0 when
      //     there is no h0: the spec's h0 = None).
      if (h_prev) {
        if constexpr (std::is_same<T, float>::value) {
          if (packed) slice_gemm(M, h_prev, ld_h, H, Wh, Whp, 0, kG, Z, /*accumulate=*/true);
        }
        if (!packed) {
          gemm(false, false, int(M), int(hw), int(H), T(1), h_prev, int(ld_h), Whp, int(hw),
               T(0), Z, int(hw));
        }
      }
      // 2b. Fused pointwise pass over the slice: the cell's forward.
      for (int64_t n = 0; n < M; ++n) {
        if (!walk.active(n, t)) continue;
        const int64_t row = n * Tn + t;
        T* h_out = hs + row * H + j0;
        const T* hp = hp_of(n, t);
        const T* cp = nullptr;
        T* c_out = nullptr;
        if (kC && save) {
          c_out = cs + row * H + j0;
          cp = !walk.first(n, t) ? cs + (n * Tn + walk.prev(t)) * H + j0 : (c0 ? c0 + n * H + j0 : zeros);
        } else if (kC) {
          c_out = c_run + n * H + j0;
          cp = c_out;  // updated in place, element by element
        }
        T* g = save ? gates + row * GS + j0 : nullptr;
        if (packed) {  // Z holds x-part + h-part (a split block's h-part alone)
          const T* sx = step_proj ? Xs + n * kSplit * hsz : A + row * GS + j0 + kShared * H;
          fwd_row(Cell{}, H, hsz, Z + n * hw, hsz, nullptr, sx, step_proj ? hsz : H, b + j0, hp,
                  cp, c_out, h_out, g, Pj);
        } else {
          fwd_row(Cell{}, H, hsz, A + row * GS + j0, H, h_prev ? Z + n * hw : zeros, nullptr, 0,
                  b + j0, hp, cp, c_out, h_out, g, Pj);
        }
      }
      if (st + 1 < walk.steps) token = team.arrive();  // this thread's part of h_t is written
    }
    for (int64_t n = 0; n < N; ++n) {
      const int64_t last = n * Tn + walk.last(n);
      std::memcpy(hT + n * H + j0, hs + last * H + j0, sizeof(T) * hsz);
      if (kC) {
        const T* c_last = save ? cs + last * H : c_run + n * H;
        std::memcpy(cT + n * H + j0, c_last + j0, sizeof(T) * hsz);
      }
    }
    if (stash) {  // every thread's last GEMM is done: h0 leaves the padding
      team.barrier();
      for (int64_t n = 0; n < N; ++n) {
        const int64_t t = walk.length(n);
        if (t < walk.steps) std::fill(hs + (n * Tn + t) * H + j0, hs + (n * Tn + t) * H + j1, T(0));
      }
    }
  });
}

template <class Cell, class T>
void seq_backward_cpu(const BackwardArgs<T>& a) {
  using Call = CellCall<Cell>;
  constexpr int kG = Cell::kGates, kSplit = Call::kSplit, kGated = Call::kGated;
  constexpr bool kC = Cell::kHasCellState;
  const SeqShape& s = a.s;
  // dA rows hold GS = kS*H columns: the recurrent side's kG blocks first (what multiplies Wh),
  // then the split blocks' input side. Gs: columns shared by both sides.
  const int64_t N = s.N, Tn = s.T, D = s.D, H = s.H, G = kG * H, GS = Call::kS * H, DH = D + H,
                R = N * Tn, Gs = (kG - kSplit) * H;
  const T *xs = a.xs, *h0 = a.h0, *c0 = kC ? a.c0 : nullptr, *Wx = a.Wx, *Wh = a.Wh, *hs = a.hs;
  const T *gates = a.gates, *cs = kC ? a.cs : nullptr, *dhs = a.dhs, *dhT = a.dhT;
  const T* dcT = kC ? a.dcT : nullptr;
  T *dxs = a.dxs, *dW = a.dW, *db = a.db;
  T* dA = a.work;           // (N, T, GS)
  T* XH = a.work + R * GS;  // (N*T, D+H): [x_t | h_{t-1}] per row
  // A gated cell's r_t * h_{t-1} per row, (N*T, H): the candidate's weight gradient takes these.
  T* RHrows = kGated ? XH + R * DH : nullptr;
  // Kh: rows of Wh^T the step's dh GEMM takes at once (a gated cell's gated block apart).
  const int64_t Kh = G - kGated * H;
  // dh0 / dc0 double as the carried gradients while walking back in time.
  T* dh_carry = a.dh0;
  T* dc_carry = kC ? a.dc0 : nullptr;
  const bool packed = std::is_same<T, float>::value && packed_gemm_enabled();
  const GemmPrecision prec = gemm_precision<T>(a.bf16);
  // Wx^T, (G*H, D), packed once for every thread's dX rows (step 3) in two parts, the shared
  // blocks' rows and the split blocks' (their dA columns are apart): the threads pack a share
  // of the panels each, all done by the step loop's first barrier.
  const int64_t wxt1 = packed ? packed_b_size(Gs, D) : 0;
  T* WxTp = packed ? thread_scratch<T, 1>(size_t(wxt1 + packed_b_size(G - Gs, D) + 1)) : nullptr;
  // db's double sums, every thread's columns (allocated here: nothing allocates inside the run).
  double* dbsum_all = thread_scratch<double, 2>(size_t(G + 16));
  const SeqWalk walk(s, a.lengths, a.reverse);
  const int64_t* rows_at = step_rows(walk, N);
  // With lengths the step's dh GEMM adds onto the carried dh (the pointwise pass zeroes what it
  // consumed): a row that is not running keeps its dhT (not started yet) or its dh0 (done).
  const bool dh_accumulate = Call::kDirectH || walk.len;
  // With lengths, the row GEMMs after the step loop (dX, and [dWx; dWh] over the rows) take the
  // valid rows alone (packed path): they are moved to the front of dA, in order, and XH is
  // built from them; dX lands in a scratch of those rows, then in its rows of dxs (the padding
  // rows' dA is zero: a third of the backward's work, with lengths uniform in [T/4, T]). The
  // weight gradient then sums only the valid rows' products, in the same order, in blocks
  // that start at other rows: the same values to float32 rounding.
  const bool compact = walk.len && packed;
  int64_t V = R;  // rows the GEMMs of steps 3 and 4 take
  int64_t* valid = nullptr;  // their original rows
  T* dXc = nullptr;
  if (compact) {
    valid = thread_scratch<int64_t, 7>(size_t(R));
    V = 0;
    for (int64_t r = 0; r < R; ++r) {
      if (walk.active(r / Tn, r % Tn)) valid[V++] = r;
    }
    dXc = thread_scratch<T, 5>(size_t(V * D + 1));
  }

  parallel_run(threads_for(s, kG), [&](const Team& team) {
    int64_t j0, j1;
    team.split(H, kSliceAlign, j0, j1);
    const int64_t hsz = j1 - j0;
    // Wh[slice, :]^T, (G*H, hsz), packed for the packed-weight kernel (float); zeros stand in
    // for an absent c0 and h0.
    int64_t c0_, c1_;  // this thread's columns of dW and db (step 4)
    team.split(G, kSliceAlign, c0_, c1_);
    const int64_t wsize1 = packed ? packed_b_size(Kh, hsz) : 0;
    const int64_t wsize = packed ? wsize1 + (kGated ? packed_b_size(G - Kh, hsz) : 0) : 0;
    const int64_t asize = packed ? packed_b_size(std::min(R, kPackRows), c1_ - c0_) : 0;
    T* scratch = thread_scratch<T>(size_t(wsize + asize + hsz + 1 + (kGated ? N * hsz : 0)));
    T* WhTp = scratch;
    T* dAp = WhTp + wsize;  // this thread's columns of dA, packed for step 4
    T* zeros = dAp + asize;
    T* drh = zeros + hsz + 1;  // a gated cell's dA_n Wh_n^T of this slice, (N, hsz)
    std::fill(zeros, zeros + hsz, T(0));
    if constexpr (std::is_same<T, float>::value) {
      if (packed) {
        pack_b(Kh, hsz, [&](int64_t n) { return Wh + (j0 + n) * G; }, 1, WhTp, prec);
        if (kGated) pack_b(G - Kh, hsz, [&](int64_t n) { return Wh + (j0 + n) * G + Kh; }, 1, WhTp + wsize1, prec);
        int64_t p0, p1;  // this thread's 16-column panels of Wx^T
        team.split((D + 15) / 16, 1, p0, p1);
        if (p1 > p0) {
          const int64_t w = std::min(D, p1 * 16) - p0 * 16;
          pack_b(Gs, w, [&](int64_t n) { return Wx + (p0 * 16 + n) * G; }, 1, WxTp + p0 * Gs * 16, prec);
          if (kSplit > 0) {
            pack_b(G - Gs, w, [&](int64_t n) { return Wx + (p0 * 16 + n) * G + Gs; }, 1,
                   WxTp + wxt1 + p0 * (G - Gs) * 16, prec);
          }
        }
      }
    }
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t j = j0; j < j1; ++j) {
        dh_carry[n * H + j] = dhT ? dhT[n * H + j] : T(0);
        if (kC) dc_carry[n * H + j] = dcT ? dcT[n * H + j] : T(0);
      }
      for (int64_t t = walk.length(n); t < Tn; ++t) {  // padding rows pass no gradient
        for (int k = 0; k < Call::kS; ++k) {
          T* da = dA + (n * Tn + t) * GS + k * H;
          std::fill(da + j0, da + j1, T(0));
        }
      }
    }
    // The recurrent input of row n at step t, and its cell state: h0's and c0's rows (or zeros)
    // at its first step.
    auto hp_of = [&](int64_t n, int64_t t) -> const T* {
      if (walk.first(n, t)) return h0 ? h0 + n * H + j0 : zeros;
      return hs + (n * Tn + walk.prev(t)) * H + j0;
    };
    auto cp_of = [&](int64_t n, int64_t t) -> const T* {
      if (!kC) return nullptr;
      if (walk.first(n, t)) return c0 ? c0 + n * H + j0 : zeros;
      return cs + (n * Tn + walk.prev(t)) * H + j0;
    };
    // The per-unit parameters' gradient: this thread's units, summed in double over steps and
    // rows in a fixed order (t down, n up) whatever the thread count.
    constexpr int kP = Cell::kUnitParams;
    const T* Pj = offset(a.P, j0);
    double* dpacc = kP > 0 ? thread_scratch<double, 3>(size_t(kP * hsz + 1)) : nullptr;
    if (dpacc) std::fill(dpacc, dpacc + kP * hsz, 0.0);
    for (int64_t st = walk.steps - 1; st >= 0; --st) {
      const int64_t t = walk.at(st), M = rows_at ? rows_at[t] : N;  // rows [0, M) take part
      if constexpr (kGated > 0) {
        // A gated cell's step in two phases: dz, dn and the direct dh (phase 1); every
        // unit's dn written (a barrier); drh = dn @ Wh_n^T for the slice; dr and drh's part of
        // dh (phase 2); every dz, dr written (a barrier); dh += [dz, dr] @ Wh_zr^T.
        for (int64_t n = 0; n < M; ++n) {
          if (!walk.active(n, t)) continue;
          const int64_t row = n * Tn + t;
          bwd_out_row(Cell{}, H, hsz, gates + row * GS + j0, hp_of(n, t), dhs + row * H + j0,
                      dh_carry + n * H + j0, dA + row * GS + j0);
        }
        team.barrier();
        if (hsz > 0) {
          if constexpr (std::is_same<T, float>::value) {
            if (packed) gemm_packed_b(M, hsz, G - Kh, dA + t * GS + Kh, Tn * GS, WhTp + wsize1, drh, hsz, false, nullptr, prec);
          }
          if (!packed) {
            gemm(false, true, int(M), int(hsz), int(G - Kh), T(1), dA + t * GS + Kh, int(Tn * GS),
                 Wh + j0 * G + Kh, int(G), T(0), drh, int(hsz));
          }
        }
        for (int64_t n = 0; n < M; ++n) {
          if (!walk.active(n, t)) continue;
          const int64_t row = n * Tn + t;
          bwd_gate_row(Cell{}, H, hsz, gates + row * GS + j0, hp_of(n, t), drh + n * hsz,
                       dh_carry + n * H + j0, dA + row * GS + j0);
        }
        team.barrier();
        if (hsz > 0) {
          if constexpr (std::is_same<T, float>::value) {
            if (packed) gemm_packed_b(M, hsz, Kh, dA + t * GS, Tn * GS, WhTp, dh_carry + j0, H, true, nullptr, prec);
          }
          if (!packed) {
            gemm(false, true, int(M), int(hsz), int(Kh), T(1), dA + t * GS, int(Tn * GS), Wh + j0 * G,
                 int(G), T(1), dh_carry + j0, int(H));
          }
        }
        continue;
      }
      // 1. Fused pointwise pass over the slice: the cell's backward, dA_t (and dc_{t-1}) from
      //    dh_t = dhs[:, t] + carried dh.
      for (int64_t n = 0; n < M; ++n) {
        if (!walk.active(n, t)) continue;
        const int64_t row = n * Tn + t;
        T* dhc = dh_carry + n * H + j0;
        bwd_row(Cell{}, H, hsz, gates + row * GS + j0, offset(cs, row * H + j0), cp_of(n, t), hp_of(n, t),
                dhs + row * H + j0, dhc, offset(dc_carry, n * H + j0), dA + row * GS + j0, Pj, dpacc);
        if (dh_accumulate && !Call::kDirectH) std::fill(dhc, dhc + hsz, T(0));
      }
      team.barrier();  // all of dA_t written before the GEMM reads every column
      // 2. dh_{t-1}[:, slice] = dA_t[:, :G] @ Wh[slice, :]^T (at the walk's end this is dh0),
      //    added to the direct part the pointwise pass left there for a cell with one.
      if constexpr (std::is_same<T, float>::value) {
        if (packed && hsz > 0) {
          gemm_packed_b(M, hsz, G, dA + t * GS, Tn * GS, WhTp, dh_carry + j0, H, dh_accumulate, nullptr, prec);
        }
      }
      if (hsz > 0 && !packed) {
        gemm(false, true, int(M), int(hsz), int(G), T(1), dA + t * GS, int(Tn * GS), Wh + j0 * G,
             int(G), T(dh_accumulate ? 1 : 0), dh_carry + j0, int(H));
      }
    }
    for (int k = 0; k < kP; ++k) {
      for (int64_t jj = 0; jj < hsz; ++jj) a.dP[k * H + j0 + jj] = T(dpacc[k * hsz + jj]);
    }
    if (compact) {  // the valid rows of dA to its front, in order (each thread its columns)
      team.barrier();  // every thread done reading dA in the last step's dh GEMM
      int64_t q0, q1;
      team.split(GS, 16, q0, q1);
      for (int64_t i = 0; i < V && q1 > q0; ++i) {  // (row valid[i] >= i: not yet overwritten)
        if (valid[i] != i) std::memcpy(dA + i * GS + q0, dA + valid[i] * GS + q0, sizeof(T) * (q1 - q0));
      }
      team.barrier();
    }
    // 3. dX = dA_x @ Wx^T (dA_x: the shared blocks and the split blocks' input side), and the
    //    [X | H_prev] rows, split by rows (compacted: the valid rows).
    int64_t r0, r1;
    team.split(V, 8, r0, r1);
    if constexpr (std::is_same<T, float>::value) {
      T* dX = compact ? dXc : dxs;
      if (packed && r1 > r0) {
        gemm_packed_b(r1 - r0, D, Gs, dA + r0 * GS, GS, WxTp, dX + r0 * D, D, false, nullptr, prec);
        if (kSplit > 0) {
          gemm_packed_b(r1 - r0, D, G - Gs, dA + r0 * GS + G, GS, WxTp + wxt1, dX + r0 * D, D, true, nullptr, prec);
        }
      }
    }
    if (!packed && r1 > r0) {
      gemm(false, true, int(r1 - r0), int(D), int(Gs), T(1), dA + r0 * GS, int(GS), Wx, int(G), T(0),
           dxs + r0 * D, int(D));
      if (kSplit > 0) {
        gemm(false, true, int(r1 - r0), int(D), int(G - Gs), T(1), dA + r0 * GS + G, int(GS),
             Wx + Gs, int(G), T(1), dxs + r0 * D, int(D));
      }
    }
    // XH's row i (and a gated cell's r_t * h_{t-1}, r: the saved block 1) from the valid row r.
    auto xh_row = [&](int64_t i, int64_t r) {
      const int64_t n = r / Tn, t = r % Tn;
      T* row = XH + i * DH;
      std::memcpy(row, xs + r * D, sizeof(T) * D);
      const T* hp = !walk.first(n, t) ? hs + (n * Tn + walk.prev(t)) * H : (h0 ? h0 + n * H : nullptr);
      if (hp) std::memcpy(row + D, hp, sizeof(T) * H);
      else std::fill(row + D, row + DH, T(0));
      if constexpr (kGated > 0) {
        const T* rr = gates + r * GS + H;
        T* rh = RHrows + i * H;
        for (int64_t j = 0; j < H; ++j) rh[j] = hp ? rr[j] * hp[j] : T(0);
      }
    };
    if (compact) {
      for (int64_t i = r0; i < r1; ++i) {
        std::memcpy(dxs + valid[i] * D, dXc + i * D, sizeof(T) * D);
        xh_row(i, valid[i]);
      }
      int64_t p0, p1;  // the padding rows' dX is zero
      team.split(R, 8, p0, p1);
      for (int64_t r = p0; r < p1; ++r) {
        if (!walk.active(r / Tn, r % Tn)) std::fill(dxs + r * D, dxs + (r + 1) * D, T(0));
      }
    } else {
      for (int64_t r = r0; r < r1; ++r) {
        if (walk.active(r / Tn, r % Tn)) {
          xh_row(r, r);
          continue;
        }
        std::fill(XH + r * DH, XH + (r + 1) * DH, T(0));  // padding: whatever xs holds stays out of dW
        std::fill(dxs + r * D, dxs + (r + 1) * D, T(0));
        if (kGated > 0) std::fill(RHrows + r * H, RHrows + (r + 1) * H, T(0));
      }
    }
    team.barrier();  // XH complete
    // 4. [dWx; dWh] = [X | H_prev]^T dA, split by output columns: in one GEMM for the shared
    //    columns; a split block's columns take X^T of its input side and H_prev^T of its
    //    recurrent side. 5. db = column sums of the input-side dA, rows added in order in
    //    double (deterministic).
    // Pieces of this thread's columns: [lo, hi) with the dA column the X rows read (xc) and the
    // one the recurrent rows read (hc), and those rows (hrows, ld hld: H_prev in XH, or a gated
    // cell's r * h_prev); shared columns are one piece read by both (merged).
    struct Piece {
      int64_t lo, hi, xc, hc;
      bool merged;
      const T* hrows;
      int64_t hld;
    };
    const int64_t Gm = kGated ? Kh : Gs;  // the merged columns end here
    Piece pieces[2];
    int npieces = 0;
    if (c0_ < std::min(c1_, Gm)) pieces[npieces++] = {c0_, std::min(c1_, Gm), c0_, c0_, true, XH + D, DH};
    if (std::max(c0_, Gm) < c1_) {
      const int64_t lo = std::max(c0_, Gm);
      if (kGated) pieces[npieces++] = {lo, c1_, lo, lo, false, RHrows, H};
      else pieces[npieces++] = {lo, c1_, lo + (G - Gs), lo, false, XH + D, DH};
    }
    if (c1_ > c0_) {
      // db in double whatever T: a float sum over N*T rows drifts far past numpy's pairwise
      // float32 sum. This thread's columns of the shared buffer (with room for the packing's
      // 16-wide padding past G); a split piece sums into its own buffer (the padding of a
      // piece that starts mid-range would reach the next thread's columns).
      double* dbsum = dbsum_all + c0_;
      std::fill(dbsum, dbsum + (c1_ - c0_ + 15) / 16 * 16, 0.0);
      double* splitsum = kSplit + kGated > 0 ? thread_scratch<double, 4>(size_t(c1_ - c0_ + 32)) : nullptr;
      if (splitsum) std::fill(splitsum, splitsum + (c1_ - c0_ + 32), 0.0);
      if constexpr (std::is_same<T, float>::value) {
        if (packed) {
          // In row chunks: each chunk of dA is packed (and added to db) just before the GEMM
          // reads it, so it is still in cache, and the packed copy is one chunk, not all rows.
          for (int64_t k0 = 0; k0 < V; k0 += kPackRows) {
            const int64_t kb = std::min(kPackRows, V - k0);
            const T* xh = XH + k0 * DH;
            for (int q = 0; q < npieces; ++q) {
              const Piece& pc = pieces[q];
              const int64_t w = pc.hi - pc.lo;
              if (pc.merged) {
                pack_b_rows(kb, w, dA + k0 * GS + pc.xc, GS, dAp, dbsum + (pc.lo - c0_), prec);
                gemm_at_packed_b(DH, w, kb, xh, DH, dAp, dW + pc.lo, G, k0 > 0, nullptr, prec);
              } else {
                pack_b_rows(kb, w, dA + k0 * GS + pc.xc, GS, dAp, splitsum, prec);
                gemm_at_packed_b(D, w, kb, xh, DH, dAp, dW + pc.lo, G, k0 > 0, nullptr, prec);
                if (pc.hc != pc.xc) pack_b_rows(kb, w, dA + k0 * GS + pc.hc, GS, dAp, nullptr, prec);
                gemm_at_packed_b(H, w, kb, pc.hrows + k0 * pc.hld, pc.hld, dAp, dW + D * G + pc.lo, G, k0 > 0, nullptr, prec);
              }
            }
          }
        }
      }
      if (!packed) {
        // In row chunks (one BLAS call's float32 sum over all N*T rows has an error growing
        // with N*T; chunks accumulated into dW keep it near the reference's N-then-T sums).
        const int64_t kc = blas_weight_grad_rows<T>(R);
        for (int64_t k0 = 0; k0 < R; k0 += kc) {
          const int kn = int(std::min(kc, R - k0));
          const T beta = T(k0 > 0 ? 1 : 0);
          for (int q = 0; q < npieces; ++q) {
            const Piece& pc = pieces[q];
            const int w = int(pc.hi - pc.lo);
            if (pc.merged) {
              gemm(true, false, int(DH), w, kn, T(1), XH + k0 * DH, int(DH), dA + k0 * GS + pc.xc,
                   int(GS), beta, dW + pc.lo, int(G));
            } else {
              gemm(true, false, int(D), w, kn, T(1), XH + k0 * DH, int(DH), dA + k0 * GS + pc.xc,
                   int(GS), beta, dW + pc.lo, int(G));
              gemm(true, false, int(H), w, kn, T(1), pc.hrows + k0 * pc.hld, int(pc.hld),
                   dA + k0 * GS + pc.hc, int(GS), beta, dW + D * G + pc.lo, int(G));
            }
          }
        }
        for (int64_t r = 0; r < R; ++r) {
          for (int q = 0; q < npieces; ++q) {
            const Piece& pc = pieces[q];
            const T* da = dA + r * GS + pc.xc;
            double* sum = pc.merged ? dbsum + (pc.lo - c0_) : splitsum;
#pragma omp simd
            for (int64_t j = 0; j < pc.hi - pc.lo; ++j) sum[j] += da[j];
          }
        }
      }
      if constexpr (kSplit + kGated > 0) {
        for (int q = 0; q < npieces; ++q) {
          const Piece& pc = pieces[q];
          if (!pc.merged) std::copy(splitsum, splitsum + (pc.hi - pc.lo), dbsum + (pc.lo - c0_));
        }
      }
      for (int64_t j = c0_; j < c1_; ++j) db[j] = T(dbsum[j - c0_]);
    }
  });
}

#define PYLSTM_INSTANTIATE(Cell, T)                                                              \
  template void seq_forward_cpu<Cell, T>(const ForwardArgs<T>&);                                 \
  template int64_t seq_forward_cpu_workspace_size<Cell, T>(const SeqShape&, bool);               \
  template void seq_backward_cpu<Cell, T>(const BackwardArgs<T>&);
#define PYLSTM_INSTANTIATE_CELL(Cell, name) PYLSTM_INSTANTIATE(Cell, float) PYLSTM_INSTANTIATE(Cell, double)
PYLSTM_FOR_EACH_CELL(PYLSTM_INSTANTIATE_CELL)
#undef PYLSTM_INSTANTIATE_CELL
#undef PYLSTM_INSTANTIATE

}  // namespace pylstm
