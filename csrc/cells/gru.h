// The GRU, reset-after form (PyTorch nn.GRU, cuDNN, Keras reset_after=True): gate blocks z, r,
// n (update, reset, candidate). Unlike the LSTM, the candidate's recurrent product h Wh_n must
// reach the cell apart from its input part, since r multiplies it: the cell declares one split
// block (kSplit), and the drivers hand it the split block's recurrent part separately. Its
// extra recurrent bias b_hn is its one row of per-unit parameters. pylstm/reference.py has the
// equations.
#pragma once

#include "common/activations.h"

namespace pylstm {

struct GruCell {
  static constexpr int kGates = 3;
  static constexpr bool kHasCellState = false;
  static constexpr int kUnitParams = 1;
  static constexpr const char* kParamName = "b_hn";  // (H,): one row is a vector
  // The last kSplit gate blocks have their recurrent part apart (hsplit). The cell saves
  // kGates + kSplit activations per unit, and its dA rows hold, in this order: the shared
  // blocks' gradients, the split blocks' recurrent-side gradients (what multiplies Wh), then
  // their input-side gradients (what multiplies Wx).
  static constexpr int kSplit = 1;
  static constexpr int kSaved = kGates + kSplit;
  // h_{t-1} reaches the loss through h_t directly too (h = ... + z * h_prev): backward returns
  // that part of dh_{t-1} (dh_direct), and the driver adds the recurrent GEMM onto it.
  static constexpr bool kDirectH = true;

  // pre: z and r pre-activations (x Wx + h Wh + b); n's input part x Wx_n + b_n. hsplit: h Wh_n.
  //   z = sigmoid(pre_z), r = sigmoid(pre_r), hn = hsplit + b_hn, n = tanh(pre_n + r * hn)
  //   h = (1 - z) * n + z * h_prev;  saved: z, r, n, hn
  template <class T>
  PYLSTM_HD static void forward(const T (&pre)[kGates], const T (&hsplit)[kSplit], T h_prev,
                                const T (&p)[kUnitParams], T (&act)[kSaved], T& h) {
    const T z = sigmoid(pre[0]), r = sigmoid(pre[1]);
    const T hn = hsplit[0] + p[0];
    const T n = tanh_fast(pre[2] + r * hn);
    h = (T(1) - z) * n + z * h_prev;
    act[0] = z;
    act[1] = r;
    act[2] = n;
    act[3] = hn;
  }

  //   dn = dh (1 - z), dz = dh (h_prev - n);  dna = dn (1 - n^2), dza = dz z (1 - z)
  //   dra = dna hn r (1 - r), dhn = dna r;  da = [dza, dra, dhn, dna];  dh_direct = dh z
  template <class T>
  PYLSTM_HD static void backward(const T (&act)[kSaved], T h_prev, T dh, T (&da)[kSaved],
                                 T& dh_direct) {
    const T z = act[0], r = act[1], n = act[2], hn = act[3];
    const T dna = dh * (T(1) - z) * (T(1) - n * n);
    da[0] = dh * (h_prev - n) * z * (T(1) - z);
    da[1] = dna * hn * r * (T(1) - r);
    da[2] = dna * r;
    da[3] = dna;
    dh_direct = dh * z;
  }

  // d b_hn: the recurrent-side gradient of n.
  template <class T>
  PYLSTM_HD static void param_grads(const T (&/*act*/)[kSaved], T /*c*/, T /*c_prev*/,
                                    const T (&da)[kSaved], T (&dp)[kUnitParams]) {
    dp[0] = da[2];
  }
};

}  // namespace pylstm

namespace pylstm {

// The GRU, reset-before form (Keras reset_after=False; with kBook, DLfS2's GRU, whose update
// gate weighs n where Keras's weighs h_prev): n = tanh(x Wx_n + b_n + (r * h_prev) Wh_n). The
// candidate's recurrent product needs r first, so a step has two phases with a GEMM each:
// phase 1 gets the shared blocks (z, r) and returns the gated input rh = r * h_prev of the
// kGated last block; the driver computes rh @ Wh_n for every unit, then phase 2 finishes.
// Backward mirrors it: phase 1 gives dz, dn and the direct part of dh_prev; the driver
// computes drh = dn_a @ Wh_n^T; phase 2 gives dr and drh's part of dh_prev. dA rows are
// [dza, dra, dna]; the candidate's weight gradient takes (r * h_prev)^T where the others take
// h_prev^T.
template <bool kBook>
struct GruBeforeCell {
  static constexpr int kGates = 3;
  static constexpr bool kHasCellState = false;
  static constexpr int kUnitParams = 0;
  static constexpr int kGated = 1;

  // pre: z, r pre-activations (x Wx + h Wh + b). Out: act z, r; rh = r * h_prev.
  template <class T>
  PYLSTM_HD static void forward_gate(const T (&pre)[2], T h_prev, T (&act)[kGates], T& rh) {
    act[0] = sigmoid(pre[0]);
    act[1] = sigmoid(pre[1]);
    rh = act[1] * h_prev;
  }
  // pre_n = x Wx_n + b_n + rh Wh_n; z = act[0]. Out: act n, h.
  //   Keras: h = (1 - z) * n + z * h_prev;  book: h = z * n + (1 - z) * h_prev
  template <class T>
  PYLSTM_HD static void forward_out(T pre_n, T h_prev, T (&act)[kGates], T& h) {
    const T z = act[0], n = tanh_fast(pre_n);
    act[2] = n;
    h = kBook ? z * n + (T(1) - z) * h_prev : (T(1) - z) * n + z * h_prev;
  }
  // Phase 1 of backward: da[0] = dza, da[2] = dna, and the direct part of dh_prev.
  template <class T>
  PYLSTM_HD static void backward_out(const T (&act)[kGates], T h_prev, T dh, T (&da)[kGates],
                                     T& dh_direct) {
    const T z = act[0], n = act[2];
    const T dn = kBook ? dh * z : dh * (T(1) - z);
    const T dz = kBook ? dh * (n - h_prev) : dh * (h_prev - n);
    da[0] = dz * z * (T(1) - z);
    da[2] = dn * (T(1) - n * n);
    dh_direct = kBook ? dh * (T(1) - z) : dh * z;
  }
  // Phase 2: drh = (dna @ Wh_n^T) of this unit. da[1] = dra; dh_gate: drh's part of dh_prev.
  template <class T>
  PYLSTM_HD static void backward_gate(const T (&act)[kGates], T h_prev, T drh, T (&da)[kGates],
                                      T& dh_gate) {
    const T r = act[1];
    da[1] = drh * h_prev * r * (T(1) - r);
    dh_gate = drh * r;
  }
};

using GruBeforeKerasCell = GruBeforeCell<false>;
using GruBookCell = GruBeforeCell<true>;

}  // namespace pylstm
