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

// Threads own slices of the H hidden units (all four gate columns of each unit), aligned to 16
// elements (one 64-byte line of floats) so that the GEMM column blocks start on cache lines.
constexpr int64_t kSliceAlign = 16;

// Below this much work per step (N*H*(D+H) multiply-adds) waking a second thread costs more
// than it saves; those calls run on the caller alone.
constexpr int64_t kMinParallelWork = 1 << 16;

int threads_for(const LstmShape& s) {
  const int nt = get_num_threads();
  if (s.N * s.H * (s.D + s.H) < kMinParallelWork) return 1;
  const int64_t slices = (s.H + kSliceAlign - 1) / kSliceAlign;
  return int(std::min<int64_t>(nt, slices));
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

  parallel_run(threads_for(s), [&](const Team& team) {
    int64_t j0, j1;  // this thread's hidden units; it alone reads and writes their columns
    team.split(H, kSliceAlign, j0, j1);
    const int64_t hsz = j1 - j0;
    if (hsz == 0) {
      for (int64_t t = 0; t < Tn; ++t) team.barrier();
      return;
    }
    // 1. Input projection of all N*T rows for this slice's four gate column blocks (the bias
    //    is added in the pointwise pass).
    for (int k = 0; k < 4; ++k) {
      gemm(false, false, int(N * Tn), int(hsz), int(D), T(1), xs, int(D), Wx + k * H + j0, int(G),
           T(0), A + k * H + j0, int(G));
    }
    if (!save) {
      for (int64_t n = 0; n < N; ++n) {
        for (int64_t j = j0; j < j1; ++j) c_run[n * H + j] = c0 ? c0[n * H + j] : T(0);
      }
    }
    for (int64_t t = 0; t < Tn; ++t) {
      T* A_t = A + t * G;  // rows n at stride T*4H
      // 2a. Recurrent GEMM for this slice: A_t += h_{t-1} @ Wh (skipped at t = 0 if h0 = 0).
      const T* h_prev = t > 0 ? hs + (t - 1) * H : h0;
      const int ld_h = t > 0 ? int(Tn * H) : int(H);
      if (h_prev) {
        for (int k = 0; k < 4; ++k) {
          gemm(false, false, int(N), int(hsz), int(H), T(1), h_prev, ld_h, Wh + k * H + j0,
               int(G), T(1), A_t + k * H + j0, int(Tn * G));
        }
      }
      // 2b. Fused pointwise pass over the slice: activations, c and h.
      for (int64_t n = 0; n < N; ++n) {
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
      }
      team.barrier();  // h_t complete before any thread's GEMM of step t+1 reads it
    }
    for (int64_t n = 0; n < N; ++n) {
      const T* c_last = save ? cs + (n * Tn + Tn - 1) * H : c_run + n * H;
      std::memcpy(hT + n * H + j0, hs + (n * Tn + Tn - 1) * H + j0, sizeof(T) * hsz);
      std::memcpy(cT + n * H + j0, c_last + j0, sizeof(T) * hsz);
    }
  });
}

template <class T>
void lstm_backward_cpu(const LstmShape& s, const T* xs, const T* h0, const T* c0, const T* Wx,
                       const T* Wh, const T* hs, const T* gates, const T* cs, const T* dhs,
                       const T* dhT, const T* dcT, T* dxs, T* dh0, T* dc0, T* dW, T* db, T* work) {
  const int64_t N = s.N, Tn = s.T, D = s.D, H = s.H, G = 4 * H, DH = D + H, R = N * Tn;
  T* dA = work;            // (N, T, 4H)
  T* XH = work + R * G;    // (N*T, D+H): [x_t | h_{t-1}] per row
  // dh0 / dc0 double as the carried gradients while walking back in time.
  T* dh_carry = dh0;
  T* dc_carry = dc0;

  parallel_run(threads_for(s), [&](const Team& team) {
    int64_t j0, j1;
    team.split(H, kSliceAlign, j0, j1);
    const int64_t hsz = j1 - j0;
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t j = j0; j < j1; ++j) {
        dh_carry[n * H + j] = dhT ? dhT[n * H + j] : T(0);
        dc_carry[n * H + j] = dcT ? dcT[n * H + j] : T(0);
      }
    }
    for (int64_t t = Tn - 1; t >= 0; --t) {
      // 1. Fused pointwise pass over the slice: dA_t and dc_{t-1} from
      //    dh_t = dhs[:, t] + carried dh.
      for (int64_t n = 0; n < N; ++n) {
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
                             cp ? cp[j] : T(0), dh_up[j] + dhc[j], dcc[j], daf, dag, dai, dao,
                             dcp);
          da[j] = daf;
          da[H + j] = dag;
          da[2 * H + j] = dai;
          da[3 * H + j] = dao;
          dcc[j] = dcp;
        }
      }
      team.barrier();  // all of dA_t written before the GEMM reads every column
      // 2. dh_{t-1}[:, slice] = dA_t @ Wh[slice, :]^T  (at t = 0 this is dh0).
      if (hsz > 0) {
        gemm(false, true, int(N), int(hsz), int(G), T(1), dA + t * G, int(Tn * G), Wh + j0 * G,
             int(G), T(0), dh_carry + j0, int(H));
      }
    }
    // 3. dX = dA @ Wx^T, and the [X | H_prev] rows, split by rows.
    int64_t r0, r1;
    team.split(R, 8, r0, r1);
    if (r1 > r0) {
      gemm(false, true, int(r1 - r0), int(D), int(G), T(1), dA + r0 * G, int(G), Wx, int(G), T(0),
           dxs + r0 * D, int(D));
    }
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / Tn, t = r % Tn;
      T* row = XH + r * DH;
      std::memcpy(row, xs + r * D, sizeof(T) * D);
      const T* hp = t > 0 ? hs + (r - 1) * H : (h0 ? h0 + n * H : nullptr);
      if (hp) std::memcpy(row + D, hp, sizeof(T) * H);
      else std::fill(row + D, row + DH, T(0));
    }
    team.barrier();  // XH complete
    // 4. [dWx; dWh] = [X | H_prev]^T dA in one GEMM, split by output columns; 5. db = column
    //    sums of dA, rows added in order (deterministic).
    int64_t c0_, c1_;
    team.split(G, kSliceAlign, c0_, c1_);
    if (c1_ > c0_) {
      gemm(true, false, int(DH), int(c1_ - c0_), int(R), T(1), XH, int(DH), dA + c0_, int(G), T(0),
           dW + c0_, int(G));
      for (int64_t j = c0_; j < c1_; ++j) db[j] = T(0);
      for (int64_t r = 0; r < R; ++r) {
        const T* da = dA + r * G;
#pragma omp simd
        for (int64_t j = c0_; j < c1_; ++j) db[j] += da[j];
      }
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
