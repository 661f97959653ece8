// pylstm's public C++ API: the fused LSTM sequence kernels and global-norm clipping on the CPU.
// Called by the pybind11 module (bind_cpu.cpp) and by the native benchmark; the CUDA backend
// will declare the same functions with a _cuda suffix. All arrays are C-contiguous, row-major,
// batch-major (N, T, .), of one dtype (float or double); no pointer may alias another unless
// stated. Sizes are validated by the caller (the bindings); these functions do not check them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace pylstm {

// N batch, T time steps, D input size, H hidden size. All >= 1.
struct LstmShape {
  int64_t N, T, D, H;
};

// Elements of scratch memory the kernels need (the caller allocates it).
//   forward with saving for backward: none (gates and cs are the saved state);
//   forward-only: N*T*4H (input projection) + N*H (running c);
//   backward: N*T*4H (dA) + N*T*(D+H) ([X | H_prev] rows for the merged weight-gradient GEMM).
int64_t lstm_forward_workspace_size(const LstmShape& s, bool save_for_backward);
int64_t lstm_backward_workspace_size(const LstmShape& s);

// Forward pass over the whole sequence.
//   xs    (N, T, D)  in
//   h0    (N, H)     in, or nullptr for zeros
//   c0    (N, H)     in, or nullptr for zeros
//   Wx    (D, 4H)    in;  Wh (H, 4H) in;  b (4H,) in.  Gate blocks f, g, i, o.
//   hs    (N, T, H)  out: h_t for every step
//   hT    (N, H)     out: h_{T-1} (a copy of hs[:, T-1])
//   cT    (N, H)     out: c_{T-1}
//   gates (N, T, 4H) out: activated gates (f, g, i, o), saved for backward; nullptr = forward-only
//   cs    (N, T, H)  out: cell states c_t, saved for backward; nullptr iff gates is nullptr
//   work  lstm_forward_workspace_size(s, gates != nullptr) elements, scratch
template <class T>
void lstm_forward_cpu(const LstmShape& s, const T* xs, const T* h0, const T* c0, const T* Wx,
                      const T* Wh, const T* b, T* hs, T* hT, T* cT, T* gates, T* cs, T* work);

// Backward pass over the whole sequence (t = T-1 .. 0), from the state the forward saved.
//   xs, h0 (nullable), c0 (nullable), Wh, hs, gates, cs: as given to / returned by forward
//   Wx    (D, 4H)    in
//   dhs   (N, T, H)  in: gradient of the loss with respect to hs
//   dhT   (N, H)     in, or nullptr: gradient with respect to hT (added to dhs[:, T-1])
//   dcT   (N, H)     in, or nullptr: gradient with respect to cT
//   dxs   (N, T, D)  out
//   dh0   (N, H)     out;  dc0 (N, H) out
//   dW    (D+H, 4H)  out: rows 0..D-1 are dWx, rows D..D+H-1 are dWh (one merged GEMM)
//   db    (4H,)      out
//   work  lstm_backward_workspace_size(s) elements, scratch
template <class T>
void lstm_backward_cpu(const LstmShape& s, const T* xs, const T* h0, const T* c0, const T* Wx,
                       const T* Wh, const T* hs, const T* gates, const T* cs, const T* dhs,
                       const T* dhT, const T* dcT, T* dxs, T* dh0, T* dc0, T* dW, T* db, T* work);

// One array of a gradient list: a pointer and its element count.
template <class T>
struct Span {
  T* data;
  int64_t size;
};

// sqrt(sum of squares of every element of every array), accumulated in double in a fixed order
// (chunks of fixed size, partial sums added in order), so the result does not depend on the
// thread count.
template <class T>
double global_norm_cpu(const std::vector<Span<T>>& arrays);

// Multiplies every element of every array by rate, in place.
template <class T>
void scale_arrays_cpu(const std::vector<Span<T>>& arrays, double rate);

// Thread count used by the kernels (BLAS and the pointwise passes). n >= 1.
void set_num_threads(int n);
int get_num_threads();

}  // namespace pylstm
