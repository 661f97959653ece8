// The fused LSTM sequence kernels on the CPU (declared in pylstm.h; called by bind_cpu.cpp and
// the native benchmark). Structure (DESIGN.md): one input-projection GEMM over all N*T rows;
// per step one recurrent GEMM and one fused pointwise pass; backward with one pointwise pass and
// one GEMM per step, then one merged weight-gradient GEMM, one dX GEMM and db as a column sum.
#include <algorithm>
#include <cstring>
#include <vector>

#include "blas.h"
#include "lstm_cell.h"
#include "pylstm.h"
#include "threads.h"

namespace pylstm {

namespace {

// Pointwise work is split into (row n, block of kJBlock hidden units) tasks; below
// kMinParallel elements per step it runs on the calling thread (waking a team costs ~us).
constexpr int64_t kJBlock = 256;
constexpr int64_t kMinParallel = 8192;

// Runs body(n, j0, j1) over rows n < N and hidden-unit blocks [j0, j1) of one step.
template <class F>
void for_each_row_block(int64_t N, int64_t H, F&& body) {
  const int64_t nb = (H + kJBlock - 1) / kJBlock;
  parallel_chunks(N * nb, 1, kMinParallel / std::min(H, kJBlock), [&](int64_t lo, int64_t hi) {
    for (int64_t task = lo; task < hi; ++task) {
      const int64_t n = task / nb, j0 = (task % nb) * kJBlock;
      body(n, j0, std::min(H, j0 + kJBlock));
    }
  });
}

}  // namespace

int64_t lstm_forward_workspace_size(const LstmShape& s, bool save_for_backward) {
  return save_for_backward ? 0 : s.N * s.T * 4 * s.H + s.N * s.H;
}

int64_t lstm_backward_workspace_size(const LstmShape& s) {
  return s.N * s.T * 4 * s.H + s.N * s.T * (s.D + s.H);
}

template <class T>
void lstm_forward_cpu(const LstmShape& s, const T* xs, const T* h0, const T* c0, const T* Wx,
                      const T* Wh, const T* b, T* hs, T* hT, T* cT, T* gates, T* cs, T* work) {
  const int64_t N = s.N, Tn = s.T, D = s.D, H = s.H, G = 4 * H;
  const bool save = gates != nullptr;
  // A holds the pre-activations (N, T, 4H); when saving, they are activated in place and kept.
  T* A = save ? gates : work;
  T* c_run = save ? nullptr : work + N * Tn * G;  // forward-only: running c, (N, H)
  if (!save) {
    if (c0) std::memcpy(c_run, c0, sizeof(T) * N * H);
    else std::fill(c_run, c_run + N * H, T(0));
  }

  // 1. Input projection for all N*T rows at once (the bias is added in the pointwise pass).
  gemm(false, false, int(N * Tn), int(G), int(D), T(1), xs, int(D), Wx, int(G), T(0), A, int(G));

  for (int64_t t = 0; t < Tn; ++t) {
    T* A_t = A + t * G;  // rows n at stride T*4H
    // 2a. Recurrent GEMM: A_t += h_{t-1} @ Wh (skipped at t = 0 when h0 is zero).
    const T* h_prev = t > 0 ? hs + (t - 1) * H : h0;
    const int ld_h = t > 0 ? int(Tn * H) : int(H);
    if (h_prev) {
      gemm(false, false, int(N), int(G), int(H), T(1), h_prev, ld_h, Wh, int(G), T(1), A_t,
           int(Tn * G));
    }
    // 2b. Fused pointwise pass: activations, c and h.
    for_each_row_block(N, H, [&](int64_t n, int64_t j0, int64_t j1) {
      T* a = A_t + n * Tn * G;
      T* h_out = hs + (n * Tn + t) * H;
      const T* cp;
      T* c_out;
      if (save) {
        c_out = cs + (n * Tn + t) * H;
        cp = t > 0 ? c_out - H : (c0 ? c0 + n * H : nullptr);
      } else {
        c_out = c_run + n * H;
        cp = c_out;  // updated in place, element by element
      }
#pragma omp simd
      for (int64_t j = j0; j < j1; ++j) {
        T f, g, i, o, c, h;
        lstm_cell_forward(a[j] + b[j], a[H + j] + b[H + j], a[2 * H + j] + b[2 * H + j],
                          a[3 * H + j] + b[3 * H + j], cp ? cp[j] : T(0), f, g, i, o, c, h);
        if (save) {
          a[j] = f;
          a[H + j] = g;
          a[2 * H + j] = i;
          a[3 * H + j] = o;
        }
        c_out[j] = c;
        h_out[j] = h;
      }
    });
  }
  for (int64_t n = 0; n < N; ++n) {
    std::memcpy(hT + n * H, hs + (n * Tn + Tn - 1) * H, sizeof(T) * H);
    std::memcpy(cT + n * H, save ? cs + (n * Tn + Tn - 1) * H : c_run + n * H, sizeof(T) * H);
  }
}

template <class T>
void lstm_backward_cpu(const LstmShape& s, const T* xs, const T* h0, const T* c0, const T* Wx,
                       const T* Wh, const T* hs, const T* gates, const T* cs, const T* dhs,
                       const T* dhT, const T* dcT, T* dxs, T* dh0, T* dc0, T* dW, T* db, T* work) {
  const int64_t N = s.N, Tn = s.T, D = s.D, H = s.H, G = 4 * H, DH = D + H;
  T* dA = work;                   // (N, T, 4H)
  T* XH = work + N * Tn * G;      // (N*T, D+H): [x_t | h_{t-1}] per row
  // dh0 / dc0 double as the carried gradients while walking back in time.
  T* dh_carry = dh0;
  T* dc_carry = dc0;
  if (dhT) std::memcpy(dh_carry, dhT, sizeof(T) * N * H);
  else std::fill(dh_carry, dh_carry + N * H, T(0));
  if (dcT) std::memcpy(dc_carry, dcT, sizeof(T) * N * H);
  else std::fill(dc_carry, dc_carry + N * H, T(0));

  for (int64_t t = Tn - 1; t >= 0; --t) {
    // 1. Fused pointwise pass: dA_t and dc_{t-1} from dh_t = dhs[:, t] + carried dh.
    for_each_row_block(N, H, [&](int64_t n, int64_t j0, int64_t j1) {
      const int64_t row = n * Tn + t;
      const T* gt = gates + row * G;
      const T* c = cs + row * H;
      const T* cp = t > 0 ? c - H : (c0 ? c0 + n * H : nullptr);
      const T* dh_up = dhs + row * H;
      T* dhc = dh_carry + n * H;
      T* dcc = dc_carry + n * H;
      T* da = dA + row * G;
#pragma omp simd
      for (int64_t j = j0; j < j1; ++j) {
        T daf, dag, dai, dao, dcp;
        lstm_cell_backward(gt[j], gt[H + j], gt[2 * H + j], gt[3 * H + j], c[j],
                           cp ? cp[j] : T(0), dh_up[j] + dhc[j], dcc[j], daf, dag, dai, dao, dcp);
        da[j] = daf;
        da[H + j] = dag;
        da[2 * H + j] = dai;
        da[3 * H + j] = dao;
        dcc[j] = dcp;
      }
    });
    // 2. dh_{t-1} = dA_t @ Wh^T  (at t = 0 this is dh0).
    gemm(false, true, int(N), int(H), int(G), T(1), dA + t * G, int(Tn * G), Wh, int(G), T(0),
         dh_carry, int(H));
  }

  // 3. dX = dA @ Wx^T over all N*T rows.
  gemm(false, true, int(N * Tn), int(D), int(G), T(1), dA, int(G), Wx, int(G), T(0), dxs, int(D));

  // 4. [dWx; dWh] = [X | H_prev]^T dA in one GEMM.
  parallel_chunks(N * Tn, 64, 1024, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t n = r / Tn, t = r % Tn;
      T* row = XH + r * DH;
      std::memcpy(row, xs + r * D, sizeof(T) * D);
      const T* hp = t > 0 ? hs + (r - 1) * H : (h0 ? h0 + n * H : nullptr);
      if (hp) std::memcpy(row + D, hp, sizeof(T) * H);
      else std::fill(row + D, row + DH, T(0));
    }
  });
  gemm(true, false, int(DH), int(G), int(N * Tn), T(1), XH, int(DH), dA, int(G), T(0), dW, int(G));

  // 5. db = column sums of dA, rows added in order (deterministic).
  parallel_chunks(G, 512, 4096, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) db[j] = T(0);
    for (int64_t r = 0; r < N * Tn; ++r) {
      const T* da = dA + r * G;
#pragma omp simd
      for (int64_t j = j0; j < j1; ++j) db[j] += da[j];
    }
  });
}

#define PYLSTM_INSTANTIATE(T)                                                                   \
  template void lstm_forward_cpu<T>(const LstmShape&, const T*, const T*, const T*, const T*,  \
                                    const T*, const T*, T*, T*, T*, T*, T*, T*);               \
  template void lstm_backward_cpu<T>(const LstmShape&, const T*, const T*, const T*, const T*, \
                                     const T*, const T*, const T*, const T*, const T*,         \
                                     const T*, const T*, T*, T*, T*, T*, T*, T*);
PYLSTM_INSTANTIATE(float)
PYLSTM_INSTANTIATE(double)
#undef PYLSTM_INSTANTIATE

}  // namespace pylstm
