// The vanilla (Elman) RNN cell, h_t = act(x_t Wx + h_{t-1} Wh + b) with act = tanh (DLfS2's
// RNN) or relu: one gate block, no cell state. It saves its output h as its one activation
// (a copy of hs, so the drivers need no special case for where backward finds it).
#pragma once

#include "common/activations.h"

namespace pylstm {

enum class RnnActivation { kTanh, kRelu };

template <RnnActivation kAct>
struct RnnCell {
  static constexpr int kGates = 1;
  static constexpr bool kHasCellState = false;
  static constexpr int kUnitParams = 0;

  // c_prev and c are unused (no cell state).
  template <class T>
  PYLSTM_HD static void forward(const T (&pre)[kGates], T /*c_prev*/, T (&act)[kGates], T& c, T& h) {
    if constexpr (kAct == RnnActivation::kTanh) {
      h = tanh_fast(pre[0]);
    } else {
      h = pre[0] < T(0) ? T(0) : pre[0];  // relu; NaN stays NaN
    }
    act[0] = h;
    c = T(0);
  }

  // tanh: da = dh * (1 - h^2); relu: da = dh where h > 0, else 0.
  template <class T>
  PYLSTM_HD static void backward(const T (&act)[kGates], T /*c*/, T /*c_prev*/, T dh, T /*dc*/,
                                 T (&da)[kGates], T& dc_prev) {
    const T h = act[0];
    if constexpr (kAct == RnnActivation::kTanh) {
      da[0] = dh * (T(1) - h * h);
    } else {
      da[0] = h > T(0) ? dh : T(0);
    }
    dc_prev = T(0);
  }
};

using RnnTanhCell = RnnCell<RnnActivation::kTanh>;
using RnnReluCell = RnnCell<RnnActivation::kRelu>;

}  // namespace pylstm
