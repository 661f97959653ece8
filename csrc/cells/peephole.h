// The peephole LSTM (Gers & Schmidhuber): the LSTM of cells/lstm.h whose input and forget gates
// also see c_{t-1} and whose output gate sees the new c_t, through diagonal weights: the first
// cell with per-unit parameters (kUnitParams rows of H beside Wx, Wh, b; ARCHITECTURE.md).
#pragma once

#include "common/activations.h"

namespace pylstm {

struct PeepholeCell {
  // Gate blocks f, g, i, o as the LSTM's; the peephole rows of P are f, i, o.
  static constexpr int kGates = 4;
  static constexpr bool kHasCellState = true;
  static constexpr int kUnitParams = 3;
  static constexpr const char* kParamName = "P";

  //   f = sigmoid(af + pf c_prev), g = tanh(ag), i = sigmoid(ai + pi c_prev)
  //   c = f * c_prev + g * i,  o = sigmoid(ao + po c),  h = o * tanh(c)
  template <class T>
  PYLSTM_HD static void forward(const T (&pre)[kGates], T c_prev, const T (&p)[kUnitParams],
                                T (&act)[kGates], T& c, T& h) {
    act[0] = sigmoid(pre[0] + p[0] * c_prev);
    act[1] = tanh_fast(pre[1]);
    act[2] = sigmoid(pre[2] + p[1] * c_prev);
    c = act[0] * c_prev + act[1] * act[2];
    act[3] = sigmoid(pre[3] + p[2] * c);
    h = act[3] * tanh_fast(c);
  }

  // As the LSTM's, with the peephole paths: o depends on c, so its pre-activation gradient
  // joins the c path (ds); f and i depend on c_prev, so theirs join dc_prev.
  //   tc = tanh(c);  dao = dh * tc * o (1 - o);  ds = dc + dh * o * (1 - tc^2) + dao * po
  //   daf = ds * c_prev * f (1 - f);  dag = ds * i (1 - g^2);  dai = ds * g * i (1 - i)
  //   dc_prev = ds * f + daf * pf + dai * pi
  template <class T>
  PYLSTM_HD static void backward(const T (&act)[kGates], T c, T c_prev, const T (&p)[kUnitParams],
                                 T dh, T dc, T (&da)[kGates], T& dc_prev) {
    const T f = act[0], g = act[1], i = act[2], o = act[3];
    const T tc = tanh_fast(c);
    da[3] = dh * tc * o * (T(1) - o);
    const T ds = dc + dh * o * (T(1) - tc * tc) + da[3] * p[2];
    da[0] = ds * c_prev * f * (T(1) - f);
    da[1] = ds * i * (T(1) - g * g);
    da[2] = ds * g * i * (T(1) - i);
    dc_prev = ds * f + da[0] * p[0] + da[2] * p[1];
  }

  // One element's share of dP, from what backward saved and computed (the drivers sum it over
  // rows and steps in double): dP = (daf * c_prev, dai * c_prev, dao * c).
  template <class T>
  PYLSTM_HD static void param_grads(const T (&/*act*/)[kGates], T c, T c_prev, const T (&da)[kGates],
                                    T (&dp)[kUnitParams]) {
    dp[0] = da[0] * c_prev;
    dp[1] = da[2] * c_prev;
    dp[2] = da[3] * c;
  }
};

}  // namespace pylstm
