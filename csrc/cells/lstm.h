// The LSTM cell (DLfS2's, no peepholes): the pointwise math of one hidden unit, forward and
// backward, for the sequence drivers (cpu/sequence.cpp, cuda/kernels.cu). A cell is a struct
// with the members below; ARCHITECTURE.md says how the drivers use them and how to add one.
#pragma once

#include "common/activations.h"

namespace pylstm {

struct LstmCell {
  // Gate blocks of H columns in Wx, Wh, b and the saved activations: f, g, i, o (the book's
  // order; pylstm/reference.py).
  static constexpr int kGates = 4;
  // Carries a cell state c beside h (c0, cT, cs, dcT, dc0 exist).
  static constexpr bool kHasCellState = true;
  // Rows of H per-unit parameters beside Wx, Wh, b (cells/peephole.h has some).
  static constexpr int kUnitParams = 0;

  // pre: pre-activations (x Wx + h Wh + b) of the unit's gates; c_prev: c_{t-1}.
  // Out: act, the activated gates saved for backward; c and h of this step.
  //   f = sigmoid(af), g = tanh(ag), i = sigmoid(ai), o = sigmoid(ao)
  //   c = f * c_prev + g * i,  h = o * tanh(c)
  template <class T>
  PYLSTM_HD static void forward(const T (&pre)[kGates], T c_prev, T (&act)[kGates], T& c, T& h) {
    act[0] = sigmoid(pre[0]);
    act[1] = tanh_fast(pre[1]);
    act[2] = sigmoid(pre[2]);
    act[3] = sigmoid(pre[3]);
    c = act[0] * c_prev + act[1] * act[2];
    h = act[3] * tanh_fast(c);
  }

  // act: saved activations; c, c_prev: c_t and c_{t-1}; dh: upstream + carried; dc: carried
  // from step t+1 (or dcT). Out: da, gradients of the pre-activations; dc_prev.
  //   tc = tanh(c);  ds = dc + dh * o * (1 - tc^2)
  //   daf = ds * c_prev * f (1 - f);  dag = ds * i * (1 - g^2)
  //   dai = ds * g * i (1 - i);       dao = dh * tc * o (1 - o);   dc_prev = ds * f
  template <class T>
  PYLSTM_HD static void backward(const T (&act)[kGates], T c, T c_prev, T dh, T dc,
                                 T (&da)[kGates], T& dc_prev) {
    const T f = act[0], g = act[1], i = act[2], o = act[3];
    const T tc = tanh_fast(c);
    const T ds = dc + dh * o * (T(1) - tc * tc);
    da[0] = ds * c_prev * f * (T(1) - f);
    da[1] = ds * i * (T(1) - g * g);
    da[2] = ds * g * i * (T(1) - i);
    da[3] = dh * tc * o * (T(1) - o);
    dc_prev = ds * f;
  }
};

}  // namespace pylstm
