// The shapes and argument structs every backend's recurrent driver takes (cpu/api.h,
// cuda/api.h), their scratch sizes, and the span of one gradient array for clipping.
#pragma once

#include <cstdint>

#include "cells/registry.h"

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
//   gates (N, T, S*H) out: the cell's S activations per unit (S = G, or more: cells/gru.h),
//         saved for backward; nullptr = forward-only
//   cs    (N, T, H)  out: cell states c_t, saved for backward; nullptr when gates is nullptr
//   work  scratch of work_size elements: at least seq_forward_cpu_workspace_size; work_size = -1
//         means seq_forward_workspace_size, which is always enough (std::invalid_argument when
//         work_size is too small for the call)
//   P     (C::kUnitParams, H) in: the cell's per-unit parameters (peepholes); nullptr for a
//         cell without them
//   lengths (N,) in, or nullptr for all T: sequence n's own length L_n in [1, T] (SeqWalk)
//   reverse: walk each sequence from its last step to its first (SeqWalk)
template <class T>
struct ForwardArgs {
  SeqShape s;
  const T *xs, *h0, *c0, *Wx, *Wh, *b;
  T *hs, *hT, *cT, *gates, *cs, *work;
  int64_t work_size = -1;
  const T* P = nullptr;
  const int64_t* lengths = nullptr;
  bool reverse = false;
  const int64_t* dev_lengths = nullptr;  // CUDA: the same lengths in device memory
  // bf16: the GEMMs' operands rounded to bfloat16, float32 accumulation (float32 on the CPU's
  // packed kernel only: cpu/packed_gemm.h)
  bool bf16 = false;
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
//   P     (C::kUnitParams, H) in, as given to forward;  dP (C::kUnitParams, H) out, summed over
//         rows and steps in double like db (both nullptr for a cell without unit parameters)
//   lengths, reverse: as given to forward
template <class T>
struct BackwardArgs {
  SeqShape s;
  const T *xs, *h0, *c0, *Wx, *Wh, *hs, *gates, *cs, *dhs, *dhT, *dcT;
  T *dxs, *dh0, *dc0, *dW, *db, *work;
  const T* P = nullptr;
  T* dP = nullptr;
  const int64_t* lengths = nullptr;
  bool reverse = false;
  const int64_t* dev_lengths = nullptr;
  bool bf16 = false;
};

// The order in which a call walks time, and which rows take part in each step. Step s (0 ..
// steps-1) is time index t = at(s): s itself, or counting down from the longest sequence's last
// step when reverse. Sequence n takes part at t < L_n (all t without lengths): there it runs the
// cell as if it were alone and L_n long, so reversed it starts from h0 at its own last step.
// Elsewhere its outputs are zero, its state stays as it was, and it passes no gradient: hT and
// cT are its state after its last step (t = L_n - 1 forward, t = 0 reversed). No step past the
// longest sequence is walked.
struct SeqWalk {
  int64_t T = 0, steps = 0;
  const int64_t* len = nullptr;  // (on the device for the CUDA kernels: a copy of the host's)
  bool reverse = false;

  SeqWalk(const SeqShape& s, const int64_t* lengths, bool rev) : T(s.T), steps(s.T), len(lengths), reverse(rev) {
    if (len) {
      steps = 0;
      for (int64_t n = 0; n < s.N; ++n) steps = length(n) > steps ? length(n) : steps;
    }
  }
  // (clamped: the bindings check the lengths, and no value may index past the arrays)
  PYLSTM_HD int64_t length(int64_t n) const {
    if (!len) return T;
    const int64_t L = len[n];
    return L < 1 ? 1 : L > T ? T : L;
  }
  PYLSTM_HD int64_t at(int64_t s) const { return reverse ? steps - 1 - s : s; }
  PYLSTM_HD int64_t prev(int64_t t) const { return reverse ? t + 1 : t - 1; }
  PYLSTM_HD bool active(int64_t n, int64_t t) const { return !len || t < length(n); }
  // The sequence's first step: its recurrent input is h0 (c0).
  PYLSTM_HD bool first(int64_t n, int64_t t) const { return reverse ? t == length(n) - 1 : t == 0; }
  // The time index of its last step (where hT, cT come from).
  PYLSTM_HD int64_t last(int64_t n) const { return reverse ? 0 : length(n) - 1; }
};

// Elements of scratch memory the drivers need (the caller allocates it), for a cell saving S
// activations per unit (S = G gate blocks, or more for a cell with split blocks: cells/gru.h):
//   forward with saving for backward: none (the gates buffer holds the pre-activations first);
//   forward-only: N*T*S*H (input projection) + N*H (running c, with a cell state);
//   backward: N*T*S*H (dA) + N*T*(D+H) ([X | H_prev] rows for the merged weight-gradient GEMM).
// A cell with a gated recurrence (cells/gru.h, GruBeforeCell) needs N*H more in the forward
// (the gated input r * h_prev of a step) and N*T*H + N*H more in the backward (those inputs of
// every row, for the candidate's weight gradient, and a step's dA_n Wh_n^T).
// The same sizes hold for the CUDA drivers (cuda/api.h).
template <class Cell>
int64_t seq_forward_workspace_size(const SeqShape& s, bool save_for_backward) {
  const int64_t gated = CellCall<Cell>::kGated > 0 ? s.N * s.H : 0;
  if (save_for_backward) return gated;
  return s.N * s.T * CellCall<Cell>::kS * s.H + (Cell::kHasCellState ? s.N * s.H : 0) + gated;
}
template <class Cell>
int64_t seq_backward_workspace_size(const SeqShape& s) {
  const int64_t gated = CellCall<Cell>::kGated > 0 ? s.N * s.T * s.H + s.N * s.H : 0;
  return s.N * s.T * CellCall<Cell>::kS * s.H + s.N * s.T * (s.D + s.H) + gated;
}

// One array of a gradient list: a pointer and its element count.
template <class T>
struct Span {
  T* data;
  int64_t size;
};

}  // namespace pylstm
