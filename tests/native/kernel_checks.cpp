// The CPU kernels checked from C++, without Python, for the sanitizer builds (ASan + UBSan, CMake
// option PYLSTM_SANITIZE; .ci/run builds and runs it): every cell's forward and backward in
// float64 and float32, on the packed-weight kernel with both forward schedules and on BLAS, at
// 1-3 threads, against a plain-loop reference written here, over whole sequences and on the walk
// with per-sequence lengths and the reverse direction (NaN in the padding); clipping, matmul
// (bias, colsum) and softmax cross-entropy against naive loops. Shapes are small: the point is
// every code path under the sanitizers, not coverage of sizes (the Python suite compares against
// pylstm's NumPy reference). Prints "N passed, M failed" and exits non-zero on a failure.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cells/registry.h"
#include "cpu/api.h"
#include "cpu/packed_gemm.h"

using namespace pylstm;

namespace {

int g_passed = 0, g_failed = 0;

void expect(bool ok, const std::string& what) {
  if (ok) {
    ++g_passed;
  } else {
    ++g_failed;
    std::printf("FAILED: %s\n", what.c_str());
  }
}

// max |a - b| / max(max |b|, tiny); infinite when a holds a NaN or an infinity (std::max
// would pass a NaN over).
template <class T>
double rel_err(const std::vector<T>& a, const std::vector<double>& b) {
  double err = 0, scale = 1e-300;
  for (size_t i = 0; i < b.size(); ++i) {
    if (!std::isfinite(double(a[i]))) return HUGE_VAL;
    err = std::max(err, std::fabs(double(a[i]) - b[i]));
    scale = std::max(scale, std::fabs(b[i]));
  }
  return err / scale;
}

std::vector<double> randn(std::mt19937_64& rng, size_t n, double scale) {
  std::normal_distribution<double> nd(0.0, scale);
  std::vector<double> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

template <class T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

// The walk of the reference (the semantics of SeqWalk, common/seq_args.h, written out apart from
// it): sequence n runs alone over its own L_n steps, t = 0 .. L_n-1, or L_n-1 .. 0 reversed,
// from its h0 / c0 row; its outputs past L_n stay zero and get no gradient, and hT / cT are its
// state after its own last step. No lengths: every L_n = T.
struct RefWalk {
  int64_t T;
  const std::vector<int64_t>& len;
  bool rev;
  int64_t length(int64_t n) const { return len.empty() ? T : len[n]; }
  int64_t at(int64_t n, int64_t k) const { return rev ? length(n) - 1 - k : k; }  // its k-th step
  bool first(int64_t n, int64_t t) const { return rev ? t == length(n) - 1 : t == 0; }
  int64_t prev(int64_t t) const { return rev ? t + 1 : t - 1; }
  int64_t last(int64_t n) const { return rev ? 0 : length(n) - 1; }
};

// The plain-loop reference of one cell's layer, in double: forward, then backward from dhs,
// dhT and dcT (h0 and c0 given; cs, dcT, dc0 only with a cell state; P, dP only with unit
// parameters), sequence by sequence on the walk of len (empty: all T) and rev. A split block's
// recurrent part goes to the cell apart; its dA's recurrent side multiplies Wh and its input side
// Wx (cells/gru.h). Finite weights assumed: an absent h0 is zeros here, a product with zeros.
template <class Cell>
struct Reference {
  std::vector<double> hs, hT, cT, dxs, dh0, dc0, dWx, dWh, db, dP;

  Reference(const SeqShape& s, const std::vector<double>& xs, const std::vector<double>& h0,
            const std::vector<double>& c0, const std::vector<double>& Wx,
            const std::vector<double>& Wh, const std::vector<double>& b,
            const std::vector<double>& P, const std::vector<double>& dhs,
            const std::vector<double>& dhT, const std::vector<int64_t>& len = {}, bool rev = false,
            const std::vector<double>& dcT = {}) {
    using Call = CellCall<Cell>;
    const RefWalk w{s.T, len, rev};
    if constexpr (Call::kGated > 0) {
      gated(s, w, xs, h0, Wx, Wh, b, dhs, dhT);
      return;
    }
    constexpr int G = Cell::kGates, S = Call::kS, kShared = G - Call::kSplit, K = Cell::kUnitParams;
    const int64_t N = s.N, T = s.T, D = s.D, H = s.H, GH = G * H;
    std::vector<double> acts(N * T * S * H), cs(N * T * H);
    hs.assign(N * T * H, 0);
    // h_{t-1} and c_{t-1} of sequence n at its step t: h0's and c0's rows at its first step
    auto h_prev = [&](int64_t n, int64_t t) {
      return !w.first(n, t) ? &hs[(n * T + w.prev(t)) * H] : &h0[n * H];
    };
    auto c_prev = [&](int64_t n, int64_t t) {
      return !w.first(n, t) ? &cs[(n * T + w.prev(t)) * H] : &c0[n * H];
    };
    auto params = [&](int64_t j, double (&pv)[Call::kP]) {
      for (int k = 0; k < Call::kP; ++k) pv[k] = k < K ? P[k * H + j] : 0.0;
    };
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t step = 0; step < w.length(n); ++step) {
        const int64_t t = w.at(n, step);
        const double *hp = h_prev(n, t), *cp = c_prev(n, t);
        for (int64_t j = 0; j < H; ++j) {
          double pre[G], hsplit[Call::kSp] = {}, act[S], pv[Call::kP], c, h;
          for (int k = 0; k < G; ++k) {
            double ax = b[k * H + j], ah = 0;
            for (int64_t d = 0; d < D; ++d) ax += xs[(n * T + t) * D + d] * Wx[d * GH + k * H + j];
            for (int64_t i = 0; i < H; ++i) ah += hp[i] * Wh[i * GH + k * H + j];
            if (k < kShared) {
              pre[k] = ax + ah;
            } else {
              pre[k] = ax;
              hsplit[k - kShared] = ah;
            }
          }
          params(j, pv);
          Call::forward(pre, hsplit, hp[j], cp[j], pv, act, c, h);
          for (int k = 0; k < S; ++k) acts[(n * T + t) * S * H + k * H + j] = act[k];
          cs[(n * T + t) * H + j] = c;
          hs[(n * T + t) * H + j] = h;
        }
      }
    }
    hT.assign(N * H, 0);
    cT.assign(N * H, 0);
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t j = 0; j < H; ++j) {
        hT[n * H + j] = hs[(n * T + w.last(n)) * H + j];
        cT[n * H + j] = cs[(n * T + w.last(n)) * H + j];
      }
    }
    dxs.assign(N * T * D, 0);
    dWx.assign(D * GH, 0);
    dWh.assign(H * GH, 0);
    db.assign(GH, 0);
    dP.assign(K * H, 0);
    dh0.assign(N * H, 0);
    dc0.assign(N * H, 0);
    std::vector<double> da(S * H);
    for (int64_t n = 0; n < N; ++n) {
      std::vector<double> dh(dhT.begin() + n * H, dhT.begin() + (n + 1) * H), dc(H, 0.0);
      if (!dcT.empty()) dc.assign(dcT.begin() + n * H, dcT.begin() + (n + 1) * H);
      for (int64_t step = w.length(n) - 1; step >= 0; --step) {
        const int64_t t = w.at(n, step), row = n * T + t;
        const double *hp = h_prev(n, t), *cpr = c_prev(n, t);
        std::vector<double> dh_prev(H, 0.0);
        for (int64_t j = 0; j < H; ++j) {
          double act[S], d[S], pv[Call::kP], dcp, dhd;
          for (int k = 0; k < S; ++k) act[k] = acts[row * S * H + k * H + j];
          params(j, pv);
          const double cp = cpr[j];
          Call::backward(act, cs[row * H + j], cp, hp[j], pv, dhs[row * H + j] + dh[j], dc[j], d,
                         dcp, dhd);
          for (int k = 0; k < S; ++k) da[k * H + j] = d[k];
          dc[j] = dcp;
          dh_prev[j] += dhd;
          if constexpr (K > 0) {
            double dp[K > 0 ? K : 1];
            Cell::param_grads(act, cs[row * H + j], cp, d, dp);
            for (int k = 0; k < K; ++k) dP[k * H + j] += dp[k];
          }
        }
        for (int64_t c = 0; c < GH; ++c) {
          const int k = int(c / H);
          const double dx = da[(k < kShared ? k : G + k - kShared) * H + c % H];  // input side
          const double dr = da[c];                                                // recurrent side
          db[c] += dx;
          for (int64_t d = 0; d < D; ++d) {
            dWx[d * GH + c] += xs[row * D + d] * dx;
            dxs[row * D + d] += dx * Wx[d * GH + c];
          }
          for (int64_t i = 0; i < H; ++i) {
            dWh[i * GH + c] += hp[i] * dr;
            dh_prev[i] += dr * Wh[i * GH + c];
          }
        }
        dh = dh_prev;
      }
      std::copy(dh.begin(), dh.end(), dh0.begin() + n * H);
      std::copy(dc.begin(), dc.end(), dc0.begin() + n * H);
    }
  }

  // A gated cell (cells/gru.h, GruBeforeCell), step by step: z, r of every unit, then n from
  // (r * h_prev) @ Wh_n; backward in the same two phases.
  void gated(const SeqShape& s, const RefWalk& w, const std::vector<double>& xs,
             const std::vector<double>& h0, const std::vector<double>& Wx,
             const std::vector<double>& Wh, const std::vector<double>& b,
             const std::vector<double>& dhs, const std::vector<double>& dhT) {
    const int64_t N = s.N, T = s.T, D = s.D, H = s.H, GH = 3 * H;
    std::vector<double> acts(N * T * GH);
    hs.assign(N * T * H, 0);
    auto h_prev = [&](int64_t n, int64_t t) {
      return !w.first(n, t) ? &hs[(n * T + w.prev(t)) * H] : &h0[n * H];
    };
    auto xproj = [&](int64_t row, int64_t col) {
      double a = b[col];
      for (int64_t d = 0; d < D; ++d) a += xs[row * D + d] * Wx[d * GH + col];
      return a;
    };
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t step = 0; step < w.length(n); ++step) {
        const int64_t t = w.at(n, step), row = n * T + t;
        const double* hp = h_prev(n, t);
        double* act = &acts[row * GH];
        std::vector<double> rh(H);
        for (int64_t j = 0; j < H; ++j) {
          double pre[2], a3[3], r;
          for (int k = 0; k < 2; ++k) {
            pre[k] = xproj(row, k * H + j);
            for (int64_t i = 0; i < H; ++i) pre[k] += hp[i] * Wh[i * GH + k * H + j];
          }
          Cell::forward_gate(pre, hp[j], a3, r);
          act[j] = a3[0];
          act[H + j] = a3[1];
          rh[j] = r;
        }
        for (int64_t j = 0; j < H; ++j) {
          double an = xproj(row, 2 * H + j), a3[3] = {act[j], act[H + j], 0}, h;
          for (int64_t i = 0; i < H; ++i) an += rh[i] * Wh[i * GH + 2 * H + j];
          Cell::forward_out(an, hp[j], a3, h);
          act[2 * H + j] = a3[2];
          hs[row * H + j] = h;
        }
      }
    }
    hT.assign(N * H, 0);
    cT.assign(N * H, 0);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t j = 0; j < H; ++j) hT[n * H + j] = hs[(n * T + w.last(n)) * H + j];
    dxs.assign(N * T * D, 0);
    dWx.assign(D * GH, 0);
    dWh.assign(H * GH, 0);
    db.assign(GH, 0);
    dh0.assign(N * H, 0);
    dc0.assign(N * H, 0);
    for (int64_t n = 0; n < N; ++n) {
      std::vector<double> dh(dhT.begin() + n * H, dhT.begin() + (n + 1) * H);
      for (int64_t step = w.length(n) - 1; step >= 0; --step) {
        const int64_t t = w.at(n, step), row = n * T + t;
        const double* hp = h_prev(n, t);
        const double* act = &acts[row * GH];
        std::vector<double> da(GH), drh(H, 0.0), dh_prev(H, 0.0);
        for (int64_t j = 0; j < H; ++j) {
          const double a3[3] = {act[j], act[H + j], act[2 * H + j]};
          double d[3] = {}, direct;
          Cell::backward_out(a3, hp[j], dhs[row * H + j] + dh[j], d, direct);
          da[j] = d[0];
          da[2 * H + j] = d[2];
          dh_prev[j] += direct;
        }
        for (int64_t i = 0; i < H; ++i)
          for (int64_t j = 0; j < H; ++j) drh[i] += da[2 * H + j] * Wh[i * GH + 2 * H + j];
        for (int64_t i = 0; i < H; ++i) {
          const double a3[3] = {act[i], act[H + i], act[2 * H + i]};
          double d[3] = {}, dgate;
          Cell::backward_gate(a3, hp[i], drh[i], d, dgate);
          da[H + i] = d[1];
          dh_prev[i] += dgate;
        }
        for (int64_t c = 0; c < GH; ++c) {
          db[c] += da[c];
          for (int64_t d = 0; d < D; ++d) {
            dWx[d * GH + c] += xs[row * D + d] * da[c];
            dxs[row * D + d] += da[c] * Wx[d * GH + c];
          }
          for (int64_t i = 0; i < H; ++i) {
            const double in = c < 2 * H ? hp[i] : act[H + i] * hp[i];
            dWh[i * GH + c] += in * da[c];
            if (c < 2 * H) dh_prev[i] += da[c] * Wh[i * GH + c];
          }
        }
        dh = dh_prev;
      }
      std::copy(dh.begin(), dh.end(), dh0.begin() + n * H);
    }
  }
};

// with_state false: h0 and c0 absent (nullptr to the kernels, zeros for the reference).
template <class Cell, class T>
void check_cell(const char* name, const SeqShape& s, const char* path, uint64_t seed) {
  const bool with_state = seed % 2 == 1;
  constexpr int G = Cell::kGates, K = Cell::kUnitParams;
  constexpr bool kC = Cell::kHasCellState;
  const int64_t N = s.N, Tn = s.T, D = s.D, H = s.H, GH = G * H, GS = CellCall<Cell>::kS * H;
  std::mt19937_64 rng(seed);
  const std::vector<double> zeros(N * H, 0.0);
  const auto xs = randn(rng, N * Tn * D, 1.0), h0 = with_state ? randn(rng, N * H, 0.5) : zeros,
             c0 = kC && with_state ? randn(rng, N * H, 0.5) : zeros,
             Wx = randn(rng, D * GH, 1.0 / std::sqrt(double(D))),
             Wh = randn(rng, H * GH, 1.0 / std::sqrt(double(H))), b = randn(rng, GH, 0.3),
             dhs = randn(rng, N * Tn * H, 1.0), dhT = randn(rng, N * H, 1.0),
             P = randn(rng, K * H, 0.5);
  const Reference<Cell> ref(s, xs, h0, c0, Wx, Wh, b, P, dhs, dhT);
  const auto xs_ = cast<T>(xs), h0_ = cast<T>(h0), c0_ = cast<T>(c0), Wx_ = cast<T>(Wx),
             Wh_ = cast<T>(Wh), b_ = cast<T>(b), dhs_ = cast<T>(dhs), dhT_ = cast<T>(dhT),
             P_ = cast<T>(P);
  std::vector<T> hs(N * Tn * H), hT(N * H), cT(N * H), gates(N * Tn * GS), cs(N * Tn * H);
  const T* h0p = with_state ? h0_.data() : nullptr;
  const T* c0p = kC && with_state ? c0_.data() : nullptr;
  std::vector<T> swork(std::max<int64_t>(1, seq_forward_workspace_size<Cell>(s, true)));
  ForwardArgs<T> f{s,         xs_.data(), h0p,                  c0p,
                   Wx_.data(), Wh_.data(), b_.data(),            hs.data(),
                   hT.data(),  kC ? cT.data() : nullptr, gates.data(), kC ? cs.data() : nullptr,
                   nullptr};
  f.P = K > 0 ? P_.data() : nullptr;
  f.work = swork.data();
  seq_forward_cpu<Cell, T>(f);
  std::vector<T> dxs(N * Tn * D), dh0(N * H), dc0(N * H), dW((D + H) * GH), db(GH), dP(K * H + 1);
  std::vector<T> work(seq_backward_workspace_size<Cell>(s));
  BackwardArgs<T> bw{s,          xs_.data(),  h0p,         c0p,
                     Wx_.data(), Wh_.data(),  hs.data(),   gates.data(),
                     kC ? cs.data() : nullptr, dhs_.data(), dhT_.data(), nullptr,
                     dxs.data(), dh0.data(), kC ? dc0.data() : nullptr, dW.data(), db.data(),
                     work.data()};
  bw.P = f.P;
  bw.dP = K > 0 ? dP.data() : nullptr;
  seq_backward_cpu<Cell, T>(bw);
  // Forward-only with the smallest scratch the call may take (exercises its bound check too).
  std::vector<T> hs_i(N * Tn * H), hT_i(N * H), cT_i(N * H);
  std::vector<T> fwork(std::max<int64_t>(1, seq_forward_cpu_workspace_size<Cell, T>(s, false)));
  ForwardArgs<T> fi = f;
  fi.hs = hs_i.data();
  fi.hT = hT_i.data();
  fi.cT = kC ? cT_i.data() : nullptr;
  fi.gates = fi.cs = nullptr;
  fi.work = fwork.data();
  fi.work_size = seq_forward_cpu_workspace_size<Cell, T>(s, false);
  seq_forward_cpu<Cell, T>(fi);

  const double tol = sizeof(T) == 8 ? 1e-9 : 2e-4;
  std::vector<double> dWx_ref(ref.dWx), dWh_ref(ref.dWh), dW_ref;
  dW_ref.insert(dW_ref.end(), dWx_ref.begin(), dWx_ref.end());
  dW_ref.insert(dW_ref.end(), dWh_ref.begin(), dWh_ref.end());
  const std::string tag = std::string(name) + (sizeof(T) == 8 ? " float64 " : " float32 ") + path +
                          (with_state ? " with h0" : " without h0") +
                          " N,T,D,H=" + std::to_string(N) + "," + std::to_string(Tn) + "," +
                          std::to_string(D) + "," + std::to_string(H);
  expect(rel_err(hs, ref.hs) < tol, tag + ": hs");
  expect(rel_err(hT, ref.hT) < tol, tag + ": hT");
  expect(rel_err(hs_i, ref.hs) < tol, tag + ": hs (forward-only)");
  expect(rel_err(dxs, ref.dxs) < tol, tag + ": dxs");
  expect(rel_err(dh0, ref.dh0) < tol, tag + ": dh0");
  expect(rel_err(dW, dW_ref) < tol, tag + ": dW");
  expect(rel_err(db, ref.db) < tol, tag + ": db");
  if (K > 0) {
    dP.resize(K * H);
    expect(rel_err(dP, ref.dP) < tol, tag + ": dP");
  }
  if (kC) {
    expect(rel_err(cT, ref.cT) < tol, tag + ": cT");
    expect(rel_err(dc0, ref.dc0) < tol, tag + ": dc0");
  }
}

// --- Per-sequence lengths and the reverse direction (SeqWalk) ------------------------------
// One case of the walk: the lengths (empty: nullptr to the kernels), the direction, which of
// h0 / c0 / dhT / dcT are given (absent: nullptr to the kernels, zeros for the reference), and
// its inputs with NaN in the padding of xs and dhs (t >= L_n), which must not reach anything.
struct WalkCase {
  std::vector<int64_t> len;
  bool rev, h0, c0, dhT, dcT;
  std::string what;
};

struct WalkInputs {
  std::vector<double> xs, h0, c0, Wx, Wh, b, P, dhs, dhT, dcT;
};

// Runs the drivers for one case on the current path (dtype, threads, schedule, packed or BLAS)
// and compares every output with the reference. Every output and scratch buffer starts as NaN,
// so an element the driver should write and does not shows; padding must be exactly zero.
template <class Cell, class T>
void run_walk(const char* name, const SeqShape& s, const WalkCase& wc, const WalkInputs& in,
              const Reference<Cell>& ref, const std::string& path) {
  constexpr int G = Cell::kGates, K = Cell::kUnitParams;
  constexpr bool kC = Cell::kHasCellState;
  const int64_t N = s.N, Tn = s.T, D = s.D, H = s.H, GH = G * H, GS = CellCall<Cell>::kS * H;
  const T nan = std::numeric_limits<T>::quiet_NaN();
  auto buf = [&](int64_t n) { return std::vector<T>(size_t(std::max<int64_t>(n, 1)), nan); };
  const auto xs = cast<T>(in.xs), h0 = cast<T>(in.h0), c0 = cast<T>(in.c0), Wx = cast<T>(in.Wx),
             Wh = cast<T>(in.Wh), b = cast<T>(in.b), P = cast<T>(in.P), dhs = cast<T>(in.dhs),
             dhT = cast<T>(in.dhT), dcT = cast<T>(in.dcT);
  const int64_t* len = wc.len.empty() ? nullptr : wc.len.data();
  auto hs = buf(N * Tn * H), hT = buf(N * H), cT = buf(N * H), gates = buf(N * Tn * GS),
       cs = buf(N * Tn * H), fwork = buf(seq_forward_workspace_size<Cell>(s, true));
  ForwardArgs<T> f{s,         xs.data(), wc.h0 ? h0.data() : nullptr, kC && wc.c0 ? c0.data() : nullptr,
                   Wx.data(), Wh.data(), b.data(), hs.data(), hT.data(), kC ? cT.data() : nullptr,
                   gates.data(), kC ? cs.data() : nullptr, fwork.data()};
  f.P = K > 0 ? P.data() : nullptr;
  f.lengths = len;
  f.reverse = wc.rev;
  seq_forward_cpu<Cell, T>(f);
  auto dxs = buf(N * Tn * D), dh0 = buf(N * H), dc0 = buf(N * H), dW = buf((D + H) * GH), db = buf(GH),
       dP = buf(K * H), bwork = buf(seq_backward_workspace_size<Cell>(s));
  BackwardArgs<T> bw{s,          xs.data(),  f.h0,        f.c0,
                     Wx.data(),  Wh.data(),  hs.data(),   gates.data(),
                     f.cs,       dhs.data(), wc.dhT ? dhT.data() : nullptr,
                     kC && wc.dcT ? dcT.data() : nullptr,
                     dxs.data(), dh0.data(), kC ? dc0.data() : nullptr, dW.data(), db.data(), bwork.data()};
  bw.P = f.P;
  bw.dP = K > 0 ? dP.data() : nullptr;
  bw.lengths = len;
  bw.reverse = wc.rev;
  seq_backward_cpu<Cell, T>(bw);
  // Forward-only with the smallest scratch the call may take (the step projection's, where the
  // schedule is that one).
  const int64_t wsize = seq_forward_cpu_workspace_size<Cell, T>(s, false);
  auto hs_i = buf(N * Tn * H), hT_i = buf(N * H), cT_i = buf(N * H), iwork = buf(wsize);
  ForwardArgs<T> fi = f;
  fi.hs = hs_i.data();
  fi.hT = hT_i.data();
  fi.cT = kC ? cT_i.data() : nullptr;
  fi.gates = fi.cs = nullptr;
  fi.work = iwork.data();
  fi.work_size = wsize;
  seq_forward_cpu<Cell, T>(fi);

  const double tol = sizeof(T) == 8 ? 1e-9 : 2e-4;
  std::vector<double> dW_ref(ref.dWx);
  dW_ref.insert(dW_ref.end(), ref.dWh.begin(), ref.dWh.end());
  const std::string tag = std::string(name) + (sizeof(T) == 8 ? " float64 " : " float32 ") + path + " " +
                          wc.what + " N,T,D,H=" + std::to_string(N) + "," + std::to_string(Tn) + "," +
                          std::to_string(D) + "," + std::to_string(H);
  expect(rel_err(hs, ref.hs) < tol, tag + ": hs");
  expect(rel_err(hT, ref.hT) < tol, tag + ": hT");
  expect(rel_err(hs_i, ref.hs) < tol, tag + ": hs (forward-only)");
  expect(rel_err(hT_i, ref.hT) < tol, tag + ": hT (forward-only)");
  expect(rel_err(dxs, ref.dxs) < tol, tag + ": dxs");
  expect(rel_err(dh0, ref.dh0) < tol, tag + ": dh0");
  expect(rel_err(dW, dW_ref) < tol, tag + ": dW");
  expect(rel_err(db, ref.db) < tol, tag + ": db");
  if (K > 0) {
    dP.resize(K * H);
    expect(rel_err(dP, ref.dP) < tol, tag + ": dP");
  }
  if (kC) {
    expect(rel_err(cT, ref.cT) < tol, tag + ": cT");
    expect(rel_err(cT_i, ref.cT) < tol, tag + ": cT (forward-only)");
    expect(rel_err(dc0, ref.dc0) < tol, tag + ": dc0");
  }
  bool zero = true;  // the padding: zero outputs (hs, and cs saved for backward), zero dxs
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t t = wc.len.empty() ? Tn : wc.len[n]; t < Tn; ++t) {
      for (int64_t j = 0; j < H; ++j) {
        const int64_t i = (n * Tn + t) * H + j;
        zero = zero && hs[i] == T(0) && hs_i[i] == T(0) && (!kC || cs[i] == T(0));
      }
      for (int64_t d = 0; d < D; ++d) zero = zero && dxs[(n * Tn + t) * D + d] == T(0);
    }
  }
  expect(zero, tag + ": padding of hs, cs, dxs exactly zero");
}

// One case on every path at one thread count: float64 (on one thread: more threads run the same
// code as float32's BLAS path) and float32, both forward schedules on the packed-weight kernel,
// and BLAS.
template <class Cell>
void check_walk_case(const char* name, const SeqShape& s, const WalkCase& wc, uint64_t seed, int threads) {
  constexpr int G = Cell::kGates, K = Cell::kUnitParams;
  const int64_t N = s.N, Tn = s.T, D = s.D, H = s.H, GH = G * H;
  std::mt19937_64 rng(seed);
  WalkInputs in;
  in.xs = randn(rng, N * Tn * D, 1.0);
  in.h0 = randn(rng, N * H, 0.5);
  in.c0 = randn(rng, N * H, 0.5);
  in.Wx = randn(rng, D * GH, 1.0 / std::sqrt(double(D)));
  in.Wh = randn(rng, H * GH, 1.0 / std::sqrt(double(H)));
  in.b = randn(rng, GH, 0.3);
  in.P = randn(rng, K * H, 0.5);
  in.dhs = randn(rng, N * Tn * H, 1.0);
  in.dhT = randn(rng, N * H, 1.0);
  in.dcT = randn(rng, N * H, 1.0);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (int64_t n = 0; n < N; ++n) {  // NaN in the padding: the reference never reads it either
    for (int64_t t = wc.len.empty() ? Tn : wc.len[n]; t < Tn; ++t) {
      std::fill(in.xs.begin() + (n * Tn + t) * D, in.xs.begin() + (n * Tn + t + 1) * D, nan);
      std::fill(in.dhs.begin() + (n * Tn + t) * H, in.dhs.begin() + (n * Tn + t + 1) * H, nan);
    }
  }
  const std::vector<double> zeros(N * H, 0.0);
  const Reference<Cell> ref(s, in.xs, wc.h0 ? in.h0 : zeros, wc.c0 ? in.c0 : zeros, in.Wx, in.Wh, in.b, in.P,
                            in.dhs, wc.dhT ? in.dhT : zeros, wc.len, wc.rev, wc.dcT ? in.dcT : zeros);
  set_num_threads(threads);
  const std::string th = std::to_string(threads) + " threads";
  if (threads == 1) run_walk<Cell, double>(name, s, wc, in, ref, "blas " + th);
  for (ForwardSchedule sch : {ForwardSchedule::kProjectionFirst, ForwardSchedule::kStepProjection}) {
    set_forward_schedule(sch);
    run_walk<Cell, float>(name, s, wc, in, ref,
                          std::string(sch == ForwardSchedule::kProjectionFirst ? "projection-first "
                                                                               : "step-projection ") + th);
  }
  set_forward_schedule(ForwardSchedule::kAuto);
  const bool old = set_packed_gemm_enabled(false);
  run_walk<Cell, float>(name, s, wc, in, ref, "blas " + th);
  set_packed_gemm_enabled(old);
}

std::string lengths_str(const std::vector<int64_t>& len) {
  if (len.empty()) return "no lengths";
  std::string out = "lengths [";
  for (size_t i = 0; i < len.size(); ++i) out += (i ? "," : "") + std::to_string(len[i]);
  return out + "]";
}

// Every cell on the walk: for each shape, lengths that are absent, all T, unsorted (with a 1 and
// a T), sorted longest first, and all shorter than T with several 1s and the longest last (every
// step's GEMM rows then reach past finished rows); each forward and reversed; h0 / c0 both
// given, both absent, or one of them, and dhT / dcT given or not, in turn; on one thread. The
// shapes that give every cell more than one thread take fewer cases (the runtime under the
// sanitizers): no lengths reversed and the three sets of lengths shorter than T, each way, with
// h0 / c0 or without in turn, at 3 or 2 threads in turn.
template <class Cell>
void check_walk_all(const char* name) {
  // The last two are the threaded ones: (24, 4, 30, 40) 16 + 24 or 16 + 16 + 8 units per thread
  // (H not a multiple of 16; N*H*(D+H) just past kMinParallelWork for the one-block
  // cells, cpu/sequence.cpp); (24, 4, 37, 17) 16 + 1 for the cells with more than one block.
  const SeqShape shapes[] = {{1, 4, 3, 5}, {5, 6, 4, 7}, {6, 1, 3, 4}, {24, 4, 30, 40}, {24, 4, 37, 17}};
  uint64_t seed = 100;
  int turn = 0;  // the threaded cases' thread count, 3 and 2 in turn
  for (const SeqShape& s : shapes) {
    const int64_t N = s.N, T = s.T;
    const bool threaded = s.H > 16;
    std::mt19937_64 rng(seed);
    auto pick = [&](int64_t lo, int64_t hi) { return lo + int64_t(rng() % uint64_t(hi - lo + 1)); };
    std::vector<std::vector<int64_t>> sets = {{}, std::vector<int64_t>(N, T)};
    if (T > 1) {
      std::vector<int64_t> unsorted(N), sorted(N), shorter(N);
      for (int64_t n = 0; n < N; ++n) unsorted[n] = pick(1, T);
      unsorted[0] = 1;
      unsorted[N / 2] = T;  // (N = 1: T)
      for (int64_t n = 0; n < N; ++n) sorted[n] = pick(1, T);
      std::sort(sorted.begin(), sorted.end(), [](int64_t a, int64_t b) { return a > b; });
      sorted[0] = T;
      sorted[N - 1] = N > 1 ? 1 : T;
      for (int64_t n = 0; n < N; ++n) shorter[n] = n % 3 == 0 ? 1 : pick(1, T - 1);
      shorter[N - 1] = T - 1;
      sets.push_back(unsorted);
      sets.push_back(sorted);
      sets.push_back(shorter);
    }
    int k = 0;
    for (size_t i = 0; i < sets.size(); ++i) {
      const auto& len = sets[i];
      if (threaded && i == 1) continue;  // (all T)
      for (bool rev : {false, true}) {
        if (threaded && i == 0 && !rev) continue;  // (check_cell's)
        for (int state = 0; state < 3; ++state, ++k) {
          if (threaded && state != int(i + rev) % 2) continue;
          // state 0: h0, c0 absent; 1: both; 2: one of them (h0 or c0, in turn)
          const bool h0 = state == 1 || (state == 2 && k % 2 == 0);
          const bool c0 = state == 1 || (state == 2 && k % 2 == 1);
          const bool dhT = k % 4 != 3, dcT = k % 2 == 1;
          const WalkCase wc{len, rev, h0, c0, dhT, dcT,
                            lengths_str(len) + (rev ? " reversed" : " forward") + (h0 ? " h0" : "") +
                                (c0 && Cell::kHasCellState ? " c0" : "") + (dhT ? " dhT" : "") +
                                (dcT && Cell::kHasCellState ? " dcT" : "")};
          const int threads = threaded ? 3 - turn++ % 2 : 1;
          check_walk_case<Cell>(name, s, wc, seed * 1000 + uint64_t(k), threads);
        }
      }
    }
    ++seed;
  }
}

template <class T>
void check_dense(uint64_t seed) {
  std::mt19937_64 rng(seed);
  const char* dt = sizeof(T) == 8 ? "float64" : "float32";
  const double tol = sizeof(T) == 8 ? 1e-12 : 1e-5;
  // clipping: the norm in double, the scale in place
  std::vector<std::vector<T>> arrays = {cast<T>(randn(rng, 1000, 1.0)), cast<T>(randn(rng, 17, 1.0)),
                                        std::vector<T>(), cast<T>(randn(rng, 70000, 0.1))};
  std::vector<Span<T>> spans;
  double want = 0;
  for (auto& a : arrays) {
    spans.push_back({a.data(), int64_t(a.size())});
    for (T v : a) want += double(v) * double(v);
  }
  const double norm = global_norm_cpu<T>(spans);
  expect(std::fabs(norm - std::sqrt(want)) <= 1e-12 * std::sqrt(want), std::string("global_norm ") + dt);
  const T first = arrays[0][0];
  scale_arrays_cpu<T>(spans, 0.5);
  expect(arrays[0][0] == T(double(first) * 0.5), std::string("scale_arrays ") + dt);
  // the data-parallel sum (out one of the inputs, a ragged end) and SGD with clipping's factor
  for (int64_t n : {int64_t(1), int64_t(70001)}) {
    std::vector<std::vector<T>> in = {cast<T>(randn(rng, n, 1.0)), cast<T>(randn(rng, n, 2.0)),
                                      cast<T>(randn(rng, n, 0.5))};
    const std::vector<double> w = {0.25, 0.5, 0.25};
    std::vector<T> want_sum(n);
    double want_sq = 0;
    for (int64_t i = 0; i < n; ++i) {
      want_sum[i] = T(w[0] * double(in[0][i]) + w[1] * double(in[1][i]) + w[2] * double(in[2][i]));
      want_sq += double(want_sum[i]) * double(want_sum[i]);
    }
    const double sq = weighted_sum_cpu<T>({in[1].data(), n}, {in[0].data(), in[1].data(), in[2].data()}, w);
    expect(in[1] == want_sum && std::fabs(sq - want_sq) <= 1e-12 * want_sq,
           std::string("weighted_sum ") + dt + " n=" + std::to_string(n));
    std::vector<T> p = in[0], want_p = in[0];
    const T lr = T(0.1);
    for (int64_t i = 0; i < n; ++i) want_p[i] = want_p[i] - lr * T(double(in[2][i]) * 0.3);
    sgd_update_cpu<T>({{p.data(), n}}, {{in[2].data(), n}}, 0.1, 0.3);
    expect(p == want_p, std::string("sgd_update ") + dt + " n=" + std::to_string(n));
  }
  // matmul with bias and colsum, plain and transposed operands, B packed and read in place
  for (int64_t M : {37, 5, 1})
  for (WeightReading w : {WeightReading::kPacked, WeightReading::kInPlace})
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      set_weight_reading(w);
      const int64_t N = 53, K = 29;
      const auto A = randn(rng, M * K, 1.0), B = randn(rng, K * N, 1.0), bias = randn(rng, N, 1.0);
      const auto A_ = cast<T>(A), B_ = cast<T>(B), bias_ = cast<T>(bias);
      std::vector<T> C(M * N), colsum(N);
      matmul_cpu<T>(ta, tb, M, N, K, A_.data(), ta ? M : K, B_.data(), tb ? K : N, T(0), C.data(), N,
                    bias_.data(), colsum.data());
      std::vector<double> Cref(M * N), cref(N, 0.0);
      for (int64_t m = 0; m < M; ++m) {
        for (int64_t n = 0; n < N; ++n) {
          double acc = bias[n];
          for (int64_t k = 0; k < K; ++k) {
            acc += double(A_[ta ? k * M + m : m * K + k]) * double(B_[tb ? n * K + k : k * N + n]);
          }
          Cref[m * N + n] = acc;
        }
      }
      for (int64_t k = 0; k < K; ++k)
        for (int64_t n = 0; n < N; ++n) cref[n] += double(B_[tb ? n * K + k : k * N + n]);
      set_weight_reading(WeightReading::kAuto);
      const std::string tag = std::string("matmul ") + dt + (ta ? " A^T" : " A") + (tb ? " B^T" : " B") +
                              (w == WeightReading::kInPlace ? " in place M=" : " packed M=") + std::to_string(M);
      expect(rel_err(C, Cref) < tol * 10, tag + ": C");
      expect(rel_err(colsum, cref) < tol, tag + ": colsum");
    }
  }
  {  // A^T copied into row tiles (stored rows 768 floats apart) in chunks of rows that are not
     // whole 8-row tiles (700 rows, a short K: one chunk)
    const int64_t M = 700, K = 40, N = 53, lda = 768;
    const auto A = cast<T>(randn(rng, K * lda, 1.0)), B = cast<T>(randn(rng, K * N, 1.0));
    std::vector<T> C(M * N);
    matmul_cpu<T>(true, false, M, N, K, A.data(), lda, B.data(), N, T(0), C.data(), N, nullptr, nullptr);
    std::vector<double> Cref(M * N, 0.0);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < K; ++k)
        for (int64_t n = 0; n < N; ++n) Cref[m * N + n] += double(A[k * lda + m]) * double(B[k * N + n]);
    expect(rel_err(C, Cref) < tol * 10, std::string("matmul ") + dt + " A^T tiled, 700 rows");
  }
  // softmax cross-entropy with an ignored row
  const int64_t M = 9, V = 31;
  const auto scores = cast<T>(randn(rng, M * V, 2.0));
  std::vector<int32_t> labels(M);
  for (int64_t m = 0; m < M; ++m) labels[m] = int32_t((m * 7) % V);
  labels[3] = -1;
  std::vector<double> lse(M);
  std::vector<T> d(M * V);
  int64_t count = 0;
  const double loss = softmax_xent_cpu<T>(M, V, scores.data(), labels.data(), -1, lse.data(), d.data(),
                                          1.0, &count);
  double want_loss = 0;
  for (int64_t m = 0; m < M; ++m) {
    if (labels[m] < 0) continue;
    double mx = -1e300, sum = 0;
    for (int64_t v = 0; v < V; ++v) mx = std::max(mx, double(scores[m * V + v]));
    for (int64_t v = 0; v < V; ++v) sum += std::exp(double(scores[m * V + v]) - mx);
    want_loss += std::log(sum) + mx - double(scores[m * V + labels[m]]);
  }
  expect(count == M - 1, std::string("softmax_xent count ") + dt);
  expect(std::fabs(loss - want_loss) <= 1e-5 * std::fabs(want_loss), std::string("softmax_xent loss ") + dt);
}

template <class Cell>
void check_cell_all(const char* name) {
  // (20, 60, 24, 40): N*T = 1200 rows, past one 1024-row chunk of the weight-gradient GEMM, with
  // enough work per step for every cell to run on more than one thread, and H not a multiple of 16
  const SeqShape shapes[] = {{1, 1, 1, 1}, {2, 3, 4, 5}, {3, 7, 17, 33}, {9, 4, 20, 40}, {4, 3, 9, 70},
                             {20, 60, 24, 40}};
  uint64_t seed = 1;
  for (const SeqShape& s : shapes) {
    check_cell<Cell, double>(name, s, "blas", seed);
    for (int threads : {1, 2, 3}) {
      set_num_threads(threads);
      for (ForwardSchedule sch : {ForwardSchedule::kProjectionFirst, ForwardSchedule::kStepProjection}) {
        for (WeightReading w : {WeightReading::kPacked, WeightReading::kInPlace}) {
          set_forward_schedule(sch);
          set_weight_reading(w);
          const std::string path = std::string(sch == ForwardSchedule::kProjectionFirst ? "projection-first"
                                                                                        : "step-projection") +
                                   (w == WeightReading::kInPlace ? " in place " : " packed ") +
                                   std::to_string(threads) + " threads";
          check_cell<Cell, float>(name, s, path.c_str(), seed);
        }
      }
      set_forward_schedule(ForwardSchedule::kAuto);
      set_weight_reading(WeightReading::kAuto);
    }
    const bool old = set_packed_gemm_enabled(false);
    check_cell<Cell, float>(name, s, "blas", seed);
    set_packed_gemm_enabled(old);
    ++seed;
  }
}

}  // namespace

int main() {
#define PYLSTM_CHECK_CELL(type, name) \
  check_cell_all<type>(name);         \
  check_walk_all<type>(name);
  PYLSTM_FOR_EACH_CELL(PYLSTM_CHECK_CELL)
#undef PYLSTM_CHECK_CELL
  set_num_threads(2);
  check_dense<float>(11);
  check_dense<double>(12);
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
