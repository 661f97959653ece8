// Native benchmark (no Python): times the CPU kernels of cpu/api.h and the GEMMs they are made
// of, for profiling without the interpreter (perf, callgrind). Build with
//   cmake -S . -B build/native -DPYLSTM_NATIVE_BENCH=ON && cmake --build build/native
// and run OPENBLAS_NUM_THREADS=1 build/native/bench_lstm_native [threads] [N T D H]...
// (OPENBLAS_NUM_THREADS=1 keeps OpenBLAS from starting idle server threads, as pylstm's Python
// module does when it loads.)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "cpu/blas.h"
#include "cells/lstm.h"
#include "cpu/packed_gemm.h"
#include "cpu/api.h"

using namespace pylstm;
using Clock = std::chrono::steady_clock;

template <class F>
static double best_ms(F&& fn, int reps) {
  fn();  // warm up
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    fn();
    best = std::min(best, std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  return best;
}

static std::vector<float> randn(size_t n, float scale, std::mt19937& rng) {
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

static void gemm_rate(int M, int N, int K, int reps) {
  std::mt19937 rng(1);
  auto A = randn(size_t(M) * K, 1.f, rng), B = randn(size_t(K) * N, 1.f, rng);
  std::vector<float> C(size_t(M) * N);
  const double ms = best_ms([&] {
    gemm(false, false, M, N, K, 1.f, A.data(), K, B.data(), N, 0.f, C.data(), N);
  }, reps);
  std::printf("  sgemm 1 thread %5d x %5d x %5d: %8.3f ms  %6.1f GFLOP/s\n", M, N, K, ms,
              2.0 * M * N * K / ms / 1e6);
}

// The AVX-512 small-M kernel of the recurrent step on one thread, B packed once.
static void packed_rate(int M, int N, int K, int reps) {
  if (!packed_gemm_enabled()) return;
  std::mt19937 rng(3);
  auto A = randn(size_t(M) * K, 1.f, rng), B = randn(size_t(K) * N, 1.f, rng);
  std::vector<float> Bp(packed_b_size(K, N)), C(size_t(M) * N);
  pack_b(K, N, [&](int64_t n) { return B.data() + n; }, N, Bp.data());
  const double ms = best_ms([&] { gemm_packed_b(M, N, K, A.data(), K, Bp.data(), C.data(), N); }, reps);
  std::printf("  small-M kernel 1 thread %5d x %5d x %5d: %8.3f ms  %6.1f GFLOP/s\n", M, N, K, ms,
              2.0 * M * N * K / ms / 1e6);
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#include <thread>
// The machine's FMA ceiling: 16 independent chains of AVX-512 FMAs (no memory traffic), the
// most any float32 kernel can reach. Returns GFLOP/s of one thread.
__attribute__((target("avx512f"))) static double fma_loop(long iters) {
  const __m512 m = _mm512_set1_ps(1.0000001f), c = _mm512_set1_ps(1e-7f);
  __m512 a[16];
  for (int i = 0; i < 16; ++i) a[i] = _mm512_set1_ps(float(i));
  const auto t0 = Clock::now();
  for (long k = 0; k < iters; ++k) {
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) a[i] = _mm512_fmadd_ps(a[i], m, c);
  }
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  float sum = 0.f;
  for (int i = 0; i < 16; ++i) sum += _mm512_reduce_add_ps(a[i]);
  if (sum == 42.f) std::printf(" ");  // keeps the chains alive
  return 16.0 * 32.0 * double(iters) / s / 1e9;
}

// The bfloat16 ceilings, measured the same way: 16 chains of vdpbf16ps (2 products of a pair
// per float32 lane: 64 FLOP each), and four AMX tiles accumulating TDPBF16PS products
// (16 x 16 x 32 multiply-adds each) as the kernel's tiles do.
__attribute__((target("avx512f,avx512bf16"))) static double bf16_dot_loop(long iters) {
  const __m512bh m = (__m512bh)_mm512_set1_epi32(0x3F803F80);  // (1, 1)
  __m512 a[16];
  for (int i = 0; i < 16; ++i) a[i] = _mm512_set1_ps(float(i));
  const auto t0 = Clock::now();
  for (long k = 0; k < iters; ++k) {
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) a[i] = _mm512_dpbf16_ps(a[i], m, m);
  }
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  float sum = 0.f;
  for (int i = 0; i < 16; ++i) sum += _mm512_reduce_add_ps(a[i]);
  if (sum == 42.f) std::printf(" ");
  return 16.0 * 64.0 * double(iters) / s / 1e9;
}

__attribute__((target("amx-tile,amx-bf16"))) static double amx_loop(long iters) {
  if (!pylstm::amx_prepare_thread()) return 0.0;
  alignas(64) static const uint16_t ones[16 * 32] = {};
  _tile_loadd(4, ones, 64);
  _tile_loadd(5, ones, 64);
  _tile_loadd(6, ones, 64);
  _tile_loadd(7, ones, 64);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  const auto t0 = Clock::now();
  for (long k = 0; k < iters; ++k) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  return 4.0 * 16 * 16 * 32 * 2 * double(iters) / s / 1e9;
}

// Peak GFLOP/s of one thread (best of 3) and of `threads` threads together.
template <class Loop>
static void peak(const char* what, int threads, long iters, Loop loop) {
  double one = 0.0;
  for (int r = 0; r < 3; ++r) one = std::max(one, loop(iters));
  if (one <= 0.0) return;
  std::vector<double> rate(size_t(threads), 0.0);
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back([&, t] { rate[size_t(t)] = loop(iters); });
  rate[0] = loop(iters);
  for (auto& th : pool) th.join();
  double all = 0.0;
  for (double r : rate) all += r;
  std::printf("  %s peak: 1 thread %.1f GFLOP/s, %d threads %.1f GFLOP/s\n", what, one, threads, all);
}

static void fma_peak(int threads) {
  if (!__builtin_cpu_supports("avx512f")) return;
  peak("AVX-512 FMA", threads, 50000000, fma_loop);
  if (pylstm::cpu_has_avx512_bf16()) peak("AVX512-BF16 vdpbf16ps", threads, 50000000, bf16_dot_loop);
  if (pylstm::amx_prepare_thread()) peak("AMX-BF16 tiles", threads, 2000000, amx_loop);
}
#else
static void fma_peak(int) {}
#endif

static void lstm_rate(const LstmShape& s, int reps) {
  std::mt19937 rng(2);
  const int64_t N = s.N, T = s.T, D = s.D, H = s.H;
  auto xs = randn(N * T * D, 1.f, rng), Wx = randn(D * 4 * H, 0.04f, rng),
       Wh = randn(H * 4 * H, 0.04f, rng), b = randn(4 * H, 0.1f, rng), dhs = randn(N * T * H, 1.f, rng);
  std::vector<float> hs(N * T * H), hT(N * H), cT(N * H), gates(N * T * 4 * H), cs(N * T * H);
  std::vector<float> dxs(N * T * D), dh0(N * H), dc0(N * H), dW((D + H) * 4 * H), db(4 * H);
  std::vector<float> wf(seq_forward_workspace_size<LstmCell>(s, false) + 1),
      wb(seq_backward_workspace_size<LstmCell>(s));
  const ForwardArgs<float> train{s, xs.data(), nullptr, nullptr, Wx.data(), Wh.data(), b.data(),
                                 hs.data(), hT.data(), cT.data(), gates.data(), cs.data(), nullptr};
  ForwardArgs<float> infer = train;
  infer.gates = infer.cs = nullptr;
  infer.work = wf.data();
  const BackwardArgs<float> back{s, xs.data(), nullptr, nullptr, Wx.data(), Wh.data(), hs.data(),
                                 gates.data(), cs.data(), dhs.data(), nullptr, nullptr, dxs.data(),
                                 dh0.data(), dc0.data(), dW.data(), db.data(), wb.data()};
  const double fwd = best_ms([&] { seq_forward_cpu<LstmCell, float>(train); }, reps);
  const double bwd = best_ms([&] { seq_backward_cpu<LstmCell, float>(back); }, reps);
  const double inf = best_ms([&] { seq_forward_cpu<LstmCell, float>(infer); }, reps);
  const double flops = 24.0 * N * T * H * (D + H);
  std::printf("lstm %ld,%ld,%ld,%ld float32 %d threads: fwd %.2f ms  bwd %.2f ms  train %.2f ms "
              "(%.1f GFLOP/s)  infer %.2f ms\n", long(N), long(T), long(D), long(H), get_num_threads(),
              fwd, bwd, fwd + bwd, flops / (fwd + bwd) / 1e6, inf);
}

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  set_num_threads(threads);
  std::vector<LstmShape> shapes;
  for (int k = 2; k + 3 < argc; k += 4) {
    shapes.push_back({std::atol(argv[k]), std::atol(argv[k + 1]), std::atol(argv[k + 2]), std::atol(argv[k + 3])});
  }
  if (shapes.empty()) shapes = {{20, 35, 650, 650}, {64, 100, 256, 256}, {1, 200, 128, 128}, {32, 35, 1024, 1024}};
  fma_peak(threads);
  std::printf("single-thread GEMM pieces:\n");
  gemm_rate(2048, 2048, 2048, 3);
  for (const auto& s : shapes) {
    const int hs = int((s.H / threads + 15) / 16 * 16);
    gemm_rate(int(s.N * s.T), hs, int(s.D), 5);      // input projection, one gate block of a slice
    gemm_rate(int(s.N), hs, int(s.H), 50);           // recurrent step, one gate block of a slice
    gemm_rate(int(s.N), int(4 * s.H), int(s.H), 50); // recurrent step, all gates, one thread
    packed_rate(int(s.N), 4 * hs, int(s.H), 50);      // forward step on a slice, own kernel
    packed_rate(int(s.N), hs, int(4 * s.H), 50);      // backward step on a slice, own kernel
  }
  for (const auto& s : shapes) lstm_rate(s, 5);
  return 0;
}
