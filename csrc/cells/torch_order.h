// The LSTM and the GRU with PyTorch's gate order (LSTM i, f, g, o; GRU r, z, n), for
// pylstm.torch: its modules hand the kernels torch's own parameters (weight_ih's transpose is a
// (D, G*H) row-major view), so no weight is reordered or copied per update. The math is the
// cells' own; only the positions of the blocks in pre, act and da differ.
#pragma once

#include "cells/gru.h"
#include "cells/lstm.h"

namespace pylstm {

struct LstmTorchCell : LstmCell {
  // LstmCell's blocks f, g, i, o are torch's blocks 1, 2, 0, 3 (act and da in torch's order).
  template <class T>
  PYLSTM_HD static void forward(const T (&pre)[kGates], T c_prev, T (&act)[kGates], T& c, T& h) {
    const T p[kGates] = {pre[1], pre[2], pre[0], pre[3]};
    T a[kGates];
    LstmCell::forward(p, c_prev, a, c, h);
    act[0] = a[2], act[1] = a[0], act[2] = a[1], act[3] = a[3];
  }
  template <class T>
  PYLSTM_HD static void backward(const T (&act)[kGates], T c, T c_prev, T dh, T dc, T (&da)[kGates],
                                 T& dc_prev) {
    const T a[kGates] = {act[1], act[2], act[0], act[3]};
    T d[kGates];
    LstmCell::backward(a, c, c_prev, dh, dc, d, dc_prev);
    da[0] = d[2], da[1] = d[0], da[2] = d[1], da[3] = d[3];
  }
};

// r and z swap places; n, the split block, stays last, and the saved activations keep
// GruCell's order (only this cell reads them). dA's blocks follow the weights' columns.
struct GruTorchCell : GruCell {
  template <class T>
  PYLSTM_HD static void forward(const T (&pre)[kGates], const T (&hsplit)[kSplit], T h_prev,
                                const T (&p)[kUnitParams], T (&act)[kSaved], T& h) {
    const T q[kGates] = {pre[1], pre[0], pre[2]};
    GruCell::forward(q, hsplit, h_prev, p, act, h);
  }
  template <class T>
  PYLSTM_HD static void backward(const T (&act)[kSaved], T h_prev, T dh, T (&da)[kSaved], T& dh_direct) {
    T d[kSaved];
    GruCell::backward(act, h_prev, dh, d, dh_direct);
    da[0] = d[1], da[1] = d[0], da[2] = d[2], da[3] = d[3];
  }
  // (GruCell::param_grads reads da[2], n's recurrent side: in the same place here)
};

}  // namespace pylstm
