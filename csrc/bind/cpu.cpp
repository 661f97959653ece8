// pybind11 module pylstm._cpu: the CPU kernels of cpu/api.h behind the shared checks of
// bind/cpu_checks.h (LSTM entry points), plus clipping, matmul, softmax cross-entropy, the thread
// knob and test hooks, each validating its arguments the same way. Imported only by
// pylstm/_backend.py. Errors are TypeError / ValueError whose message starts with the
// argument's name.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cblas.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cmath>
#include <memory>
#include <random>
#include <stdexcept>
#include <sstream>
#include <string>
#include <vector>

#include "bind/cpu_checks.h"
#include "common/activations.h"
#include "cpu/packed_gemm.h"
#include "cpu/api.h"
#include "cpu/test_hooks.h"
#include "cpu/threads.h"
#include "common/clip_rule.h"

namespace py = pybind11;

namespace pylstm {
namespace {

using namespace bind;  // NOLINT: the shared checking helpers

// The norm, and the scaling when clipping, over one set of spans taken while the GIL was held
// (GradList): nothing is read from the arrays again once it is released.
template <class T>
double norm_and_clip(std::vector<py::array> arrays, bool clip, double max_norm,
                     bool error_if_nonfinite) {
  const GradList<T> g = grad_spans<T>(std::move(arrays));
  double total;
  {
    py::gil_scoped_release nogil;
    total = global_norm_cpu<T>(g.spans);
  }
  if (!clip) return total;
  if (!std::isfinite(total)) {
    if (error_if_nonfinite) {
      // (as Python prints it: nan or inf, not std::to_string's "-nan")
      const std::string msg = std::string("grads: the global norm is ") +
                              (std::isnan(total) ? "nan" : "inf") +
                              " (NaN or inf in the gradients); nothing was scaled";
      PyErr_SetString(PyExc_FloatingPointError, msg.c_str());
      throw py::error_already_set();
    }
    return total;
  }
  const double rate = clip_rate(total, max_norm);
  if (rate < 1.0) {
    py::gil_scoped_release nogil;
    scale_arrays_cpu<T>(g.spans, rate);
  }
  return total;
}

double global_norm(const py::object& grads) {
  std::vector<py::array> arrays;
  const int is = check_grad_list(grads, false, arrays);
  if (is == 0) return 0.0;
  return is == 4 ? norm_and_clip<float>(std::move(arrays), false, 0.0, false)
                 : norm_and_clip<double>(std::move(arrays), false, 0.0, false);
}

// clip_value(grads, limit): clamps every element to [-limit, limit] in place.
void clip_value(const py::object& grads, double limit) {
  if (!(limit > 0.0) || !std::isfinite(limit)) {
    throw py::value_error("limit must be a finite number > 0, got " + std::to_string(limit));
  }
  std::vector<py::array> arrays;
  const int is = check_grad_list(grads, true, arrays);
  if (is == 0) return;
  auto run = [&](auto zero) {
    using T = decltype(zero);
    const GradList<T> g = grad_spans<T>(std::move(arrays));
    py::gil_scoped_release nogil;
    clip_value_cpu<T>(g.spans, limit);
  };
  if (is == 4) run(0.0f);
  else run(0.0);
}

double clip_grads(const py::object& grads, double max_norm, bool error_if_nonfinite) {
  check_max_norm(max_norm);
  std::vector<py::array> arrays;
  const int is = check_grad_list(grads, true, arrays);
  if (is == 0) return 0.0;
  return is == 4 ? norm_and_clip<float>(std::move(arrays), true, max_norm, error_if_nonfinite)
                 : norm_and_clip<double>(std::move(arrays), true, max_norm, error_if_nonfinite);
}

// [lo, hi) byte ranges of two arrays overlap
inline bool overlap(const py::array& a, const py::array& b) {
  const char* a0 = static_cast<const char*>(a.data());
  const char* b0 = static_cast<const char*>(b.data());
  return a.nbytes() && b.nbytes() && a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes();
}

// weighted_sum(out, inputs, weights): out = sum_k weights[k] * inputs[k] (cpu/update.cpp);
// returns the sum of squares of out. An input may be out itself, but not overlap it otherwise.
double weighted_sum(py::array out, const py::object& inputs, const std::vector<double>& weights) {
  const int is = float_itemsize(out, "out");
  if (!(out.flags() & py::array::c_style)) throw py::value_error("out must be C-contiguous");
  if (!out.writeable()) throw py::value_error("out must be writable, got a read-only array");
  std::vector<py::array> ins;
  const int in_is = check_grad_list(inputs, false, ins, "inputs");
  if (ins.empty()) throw py::value_error("inputs must hold at least one array");
  if (in_is != is) {
    throw py::type_error("inputs have dtype " + dtype_str(ins[0]) + " but out has " + dtype_str(out));
  }
  if (weights.size() != ins.size()) {
    throw py::value_error("weights must hold one number per input (" + std::to_string(ins.size()) +
                          "), got " + std::to_string(weights.size()));
  }
  for (size_t k = 0; k < ins.size(); ++k) {
    const std::string name = "inputs[" + std::to_string(k) + "]";
    if (ins[k].size() != out.size()) {
      throw py::value_error(name + " has " + std::to_string(ins[k].size()) + " elements, out has " +
                            std::to_string(out.size()));
    }
    if (ins[k].data() != out.data() && overlap(ins[k], out)) {
      throw py::value_error(name + " overlaps out without being out");
    }
    if (!std::isfinite(weights[k])) throw py::value_error("weights[" + std::to_string(k) + "] must be finite");
  }
  auto run = [&](auto zero) {
    using T = decltype(zero);
    std::vector<const T*> ptrs;
    for (const auto& a : ins) ptrs.push_back(static_cast<const T*>(a.data()));
    Span<T> o{mptr<T>(out), int64_t(out.size())};
    py::gil_scoped_release nogil;
    return weighted_sum_cpu<T>(o, ptrs, weights);
  };
  return is == 4 ? run(0.0f) : run(0.0);
}

// sgd_update(params, grads, lr, scale): p -= lr * (g * scale) for every pair, in place
// (cpu/update.cpp); the grads are not written.
void sgd_update(const py::object& params, const py::object& grads, double lr, double scale) {
  if (!std::isfinite(lr)) throw py::value_error("lr must be finite, got " + std::to_string(lr));
  if (!std::isfinite(scale)) throw py::value_error("scale must be finite, got " + std::to_string(scale));
  std::vector<py::array> ps, gs;
  const int is = check_grad_list(params, true, ps, "params");
  const int gis = check_grad_list(grads, false, gs);
  if (ps.size() != gs.size()) {
    throw py::value_error("grads must hold one array per parameter (" + std::to_string(ps.size()) +
                          "), got " + std::to_string(gs.size()));
  }
  if (ps.empty()) return;
  if (gis != is) throw py::type_error("grads have dtype " + dtype_str(gs[0]) + " but params have " + dtype_str(ps[0]));
  for (size_t k = 0; k < ps.size(); ++k) {
    const std::string name = "grads[" + std::to_string(k) + "]";
    if (gs[k].size() != ps[k].size()) {
      throw py::value_error(name + " has " + std::to_string(gs[k].size()) + " elements, params[" +
                            std::to_string(k) + "] has " + std::to_string(ps[k].size()));
    }
    if (overlap(gs[k], ps[k])) throw py::value_error(name + " overlaps params[" + std::to_string(k) + "]");
  }
  auto run = [&](auto zero) {
    using T = decltype(zero);
    const GradList<T> p = grad_spans<T>(std::move(ps)), g = grad_spans<T>(std::move(gs));
    py::gil_scoped_release nogil;
    sgd_update_cpu<T>(p.spans, g.spans, lr, scale);
  };
  if (is == 4) run(0.0f);
  else run(0.0);
}

// Test hook: applies the kernels' own sigmoid or tanh (common/activations.h) elementwise, so the tests
// can measure their error in ulp against numpy.
template <class T>
py::array cell_math(const py::array& x, bool use_tanh) {
  py::array out = empty<T>({x.size()});
  const T* src = static_cast<const T*>(x.data());
  T* dst = mptr<T>(out);
  for (py::ssize_t k = 0; k < x.size(); ++k) dst[k] = use_tanh ? tanh_fast(src[k]) : sigmoid(src[k]);
  return out;
}

py::array cell_math_any(const py::object& x_o, bool use_tanh) {
  py::array x = as_array(x_o, "x");
  const int is = float_itemsize(x, "x");
  check_array(x, "x", is, {-1}, false, "x");
  return is == 4 ? cell_math<float>(x, use_tanh) : cell_math<double>(x, use_tanh);
}

// --- Dense helpers for the layers ---------------------------------------------------------
// A 2-D float array that is C-contiguous (used as is) or F-contiguous (used as the transpose
// of a C-contiguous array): returns the BLAS transpose flag and leading dimension.
struct Mat {
  py::array a;
  bool trans;
  int64_t rows, cols, ld;
};

Mat as_matrix(const py::object& o, const char* name, int itemsize, const char* owner) {
  py::array a = as_array(o, name);
  if (a.ndim() != 2) {
    throw py::value_error(std::string(name) + " must have rank 2, got rank " +
                          std::to_string(a.ndim()) + " with shape " + shape_str(a));
  }
  if (!is_float(view_of(a, name), itemsize)) {
    throw py::type_error(std::string(name) + " must have dtype " +
                         (itemsize == 4 ? "float32" : "float64") + " (the dtype of " + owner +
                         "), got " + dtype_str(a));
  }
  const int64_t r = a.shape(0), c = a.shape(1);
  if (a.flags() & py::array::c_style) return {a, false, r, c, std::max<int64_t>(c, 1)};
  if (a.flags() & py::array::f_style) return {a, true, r, c, std::max<int64_t>(r, 1)};
  throw py::value_error(std::string(name) + " must be C- or F-contiguous, got strides " +
                        py::str(a.attr("strides")).cast<std::string>());
}

template <class T>
void matmul_impl(const Mat& A, const Mat& B, py::array& out, const py::object& bias,
                 const py::object& colsum, bool bf16) {
  const T* a = static_cast<const T*>(A.a.data());
  const T* b = static_cast<const T*>(B.a.data());
  T* c = mptr<T>(out);
  const T* bi = bias.is_none() ? nullptr : static_cast<const T*>(bias.cast<py::array>().data());
  py::array cs_arr = colsum.is_none() ? py::array() : colsum.cast<py::array>();
  T* cs = colsum.is_none() ? nullptr : mptr<T>(cs_arr);
  py::gil_scoped_release nogil;
  matmul_cpu<T>(A.trans, B.trans, A.rows, B.cols, A.cols, a, A.ld, b, B.ld, T(0), c,
                std::max<int64_t>(B.cols, 1), bi, cs, bf16);
}

py::array matmul(const py::object& a_o, const py::object& b_o, const py::object& out_o,
                 const py::object& bias_o, const py::object& colsum_o, const std::string& precision) {
  py::array a0 = as_array(a_o, "a");
  const int is = float_itemsize(a0, "a");
  Dims pd;  // (the precision rule and the bf16 kernel's requirements, as the recurrent calls')
  pd.itemsize = is;
  pd.bf16 = read_precision(precision, is, "a");
  require_bf16_kernel(pd);
  Mat A = as_matrix(a_o, "a", is, "a"), B = as_matrix(b_o, "b", is, "a");
  if (A.cols != B.rows) {
    throw py::value_error("b must have " + std::to_string(A.cols) + " rows (a is " +
                          shape_str(A.a) + "), got shape " + shape_str(B.a));
  }
  if (A.rows < 1 || A.cols < 1 || B.cols < 1) {
    throw py::value_error("a, b: every dimension must be >= 1, got " + shape_str(A.a) + " and " +
                          shape_str(B.a));
  }
  if (A.rows * A.cols > INT_MAX || B.rows * B.cols > INT_MAX || A.rows * B.cols > INT_MAX) {
    throw py::value_error("a, b: too large for 32-bit BLAS indexing");
  }
  py::array out;
  if (out_o.is_none()) {
    out = is == 4 ? empty<float>({A.rows, B.cols}) : empty<double>({A.rows, B.cols});
  } else {
    out = as_array(out_o, "out");
    check_array(out, "out", is, {A.rows, B.cols}, true, "a");
    if (py::module_::import("numpy").attr("shares_memory")(out, A.a).cast<bool>() ||
        py::module_::import("numpy").attr("shares_memory")(out, B.a).cast<bool>()) {
      throw py::value_error("out must not overlap a or b");
    }
  }
  py::object bias = py::none(), colsum = py::none();
  const auto np = py::module_::import("numpy");
  if (!bias_o.is_none()) {
    py::array bi = as_array(bias_o, "bias");
    check_array(bi, "bias", is, {B.cols}, false, "a");
    if (np.attr("shares_memory")(out, bi).cast<bool>()) throw py::value_error("bias must not overlap out");
    bias = bi;
  }
  if (!colsum_o.is_none()) {
    py::array cs = as_array(colsum_o, "colsum");
    check_array(cs, "colsum", is, {B.cols}, true, "a");
    for (const py::array* other : {&out, &A.a, &B.a}) {
      if (np.attr("shares_memory")(cs, *other).cast<bool>()) {
        throw py::value_error("colsum must not overlap a, b or out");
      }
    }
    if (!bias.is_none() && np.attr("shares_memory")(cs, bias).cast<bool>()) {
      throw py::value_error("colsum must not overlap bias");
    }
    colsum = cs;
  }
  if (is == 4) matmul_impl<float>(A, B, out, bias, colsum, pd.bf16);
  else matmul_impl<double>(A, B, out, bias, colsum, pd.bf16);
  return out;
}

template <class T>
py::tuple softmax_xent_impl(const py::array& s, const py::array& lab, int32_t ignore,
                            bool want_grad, double grad_scale) {
  const int64_t M = s.shape(0), V = s.shape(1);
  py::array lse = empty<double>({M});
  py::object d = py::none();
  T* dp = nullptr;
  if (want_grad) {
    py::array g = empty<T>({M, V});
    dp = mptr<T>(g);
    d = g;
  }
  const T* sp = static_cast<const T*>(s.data());
  const int32_t* lp = static_cast<const int32_t*>(lab.data());
  double* lsep = static_cast<double*>(py::array(lse).mutable_data());
  int64_t count = 0;
  double total;
  {
    py::gil_scoped_release nogil;
    total = softmax_xent_cpu<T>(M, V, sp, lp, ignore, lsep, dp, grad_scale, &count);
  }
  return py::make_tuple(total, count, d);
}

// Test hook for the thread pool (cpu/test_hooks.cpp): (inconsistencies, exceptions caught).
// A test hook's three-way setting by name (names[i] is the enum's value i): sets it and returns
// the old setting's name.
template <class E>
std::string set_mode_by_name(const std::string& mode, const std::array<const char*, 3>& names, E (*set)(E)) {
  for (int i = 0; i < 3; ++i) {
    if (mode == names[i]) return names[size_t(set(E(i)))];
  }
  throw py::value_error(std::string("mode must be '") + names[0] + "', '" + names[1] + "' or '" + names[2] +
                        "', got '" + mode + "'");
}

py::tuple pool_stress(int runs, int max_threads, uint64_t seed) {
  if (runs < 0 || max_threads < 2 || max_threads > 64) {
    throw py::value_error("runs must be >= 0 and max_threads in [2, 64]");
  }
  PoolStressResult r;
  {
    py::gil_scoped_release nogil;
    r = pool_stress_run(runs, max_threads, seed);
  }
  return py::make_tuple(r.inconsistencies, r.caught);
}

py::tuple softmax_xent(const py::object& scores_o, const py::object& labels_o, int ignore_label,
                       const py::object& grad_scale) {
  py::array s = as_array(scores_o, "scores");
  const int is = float_itemsize(s, "scores");
  if (s.ndim() != 2 || s.shape(0) < 1 || s.shape(1) < 1) {
    throw py::value_error("scores must have shape (M, V) with M, V >= 1, got " + shape_str(s));
  }
  check_array(s, "scores", is, {-1, -1}, false, "scores");
  py::array lab = as_array(labels_o, "labels");
  const py::dtype ldt = lab.dtype();
  if (!(ldt.kind() == 'i' && ldt.itemsize() == 4)) {
    throw py::type_error("labels must have dtype int32, got " + dtype_str(lab));
  }
  check_array_shape_only(lab, "labels", {s.shape(0)});
  const int64_t V = s.shape(1);
  const int32_t* lp = static_cast<const int32_t*>(lab.data());
  for (py::ssize_t r = 0; r < lab.size(); ++r) {
    if (lp[r] != ignore_label && (lp[r] < 0 || lp[r] >= V)) {
      throw py::value_error("labels[" + std::to_string(r) + "] = " + std::to_string(lp[r]) +
                            " is outside [0, " + std::to_string(V) + ") and not ignore_label (" +
                            std::to_string(ignore_label) + ")");
    }
  }
  const bool want = !grad_scale.is_none();
  const double gs = want ? grad_scale.cast<double>() : 0.0;
  return is == 4 ? softmax_xent_impl<float>(s, lab, ignore_label, want, gs)
                 : softmax_xent_impl<double>(s, lab, ignore_label, want, gs);
}

}  // namespace
}  // namespace pylstm

PYBIND11_MODULE(_cpu, m) {
  using namespace pylstm;
  m.doc() = "pylstm CPU kernels (private: use the functions in pylstm)";
  // One entry per pass for every cell; lstm_* are the same functions with the LSTM default.
  for (const char* name : {"forward", "lstm_forward"}) {
    m.def(name, &seq_forward, py::arg("xs"), py::arg("Wx"), py::arg("Wh"), py::arg("b"),
          py::arg("h0").none(true), py::arg("c0").none(true), py::arg("save_for_backward"),
          py::arg("cell") = "lstm", py::arg("P").none(true) = py::none(),
          py::arg("lengths").none(true) = py::none(), py::arg("reverse") = false,
          py::arg("precision") = "fp32",
          "Fused recurrent forward. Returns (hs, hT, cT, gates, cs); gates and cs are None when "
          "save_for_backward is False, cT and cs for a cell without a cell state. P: the cell's "
          "per-unit parameters (peepholes), None for a cell without them. lengths: (N,) int64 "
          "per-sequence lengths or None; reverse: walk each sequence from its last step.");
  }
  for (const char* name : {"backward", "lstm_backward"}) {
    m.def(name, &seq_backward, py::arg("xs"), py::arg("h0").none(true), py::arg("c0").none(true),
          py::arg("Wx"), py::arg("Wh"), py::arg("b"), py::arg("hs"), py::arg("gates"),
          py::arg("cs").none(true), py::arg("dhs"), py::arg("dhT").none(true),
          py::arg("dcT").none(true), py::arg("cell") = "lstm", py::arg("P").none(true) = py::none(),
          py::arg("lengths").none(true) = py::none(), py::arg("reverse") = false,
          py::arg("precision") = "fp32",
          "Fused recurrent backward. Returns (dxs, dh0, dc0, dWx, dWh, db, dP); dc0 is None for a "
          "cell without a cell state, dP for one without per-unit parameters.");
  }
  m.def("forward_check", &forward_check, py::arg("xs"), py::arg("Wx"), py::arg("Wh"), py::arg("b"),
        py::arg("h0").none(true) = py::none(), py::arg("c0").none(true) = py::none(),
        py::arg("cell") = "lstm", py::arg("prefix") = "", py::arg("P").none(true) = py::none(),
        py::arg("lengths").none(true) = py::none(), py::arg("precision") = "fp32",
        "The argument rules of a forward call, without running it: (N, T, D, H, itemsize). "
        "Argument names in errors get `prefix`.");
  m.def("backward_check", &backward_check, py::arg("xs"), py::arg("h0").none(true),
        py::arg("c0").none(true), py::arg("Wx"), py::arg("Wh"), py::arg("b"), py::arg("hs"),
        py::arg("gates"), py::arg("cs").none(true), py::arg("dhs"), py::arg("dhT").none(true),
        py::arg("dcT").none(true), py::arg("cell") = "lstm", py::arg("prefix") = "",
        py::arg("P").none(true) = py::none(), py::arg("lengths").none(true) = py::none(),
        py::arg("precision") = "fp32",
        "The argument rules of a backward call, without running it: (N, T, D, H, itemsize). "
        "The forward's inputs and saved arrays are named with `prefix`.");
  m.def("transpose", [](const py::object& src_o, const py::object& out_o) {
    // src (R, C) and out (C, R): the rows of each may be apart (a column block of a wider
    // array: pylstm.torch moves each gate block between the two layouts this way), elements
    // adjacent; out writable, of src's dtype, not overlapping src.
    auto row_blocks = [](const py::array& a, const char* name, int is) {
      if (a.ndim() != 2 || a.strides(1) != is || a.strides(0) < a.shape(1) * is || a.strides(0) % is != 0) {
        throw py::value_error(std::string(name) + " must be a 2-D array with adjacent elements in each row, "
                              "got shape " + shape_str(a) + " and strides " +
                              py::str(a.attr("strides")).cast<std::string>());
      }
      return int64_t(a.strides(0) / is);
    };
    py::array src = as_array(src_o, "src");
    const int is = float_itemsize(src, "src");
    const int64_t lds = row_blocks(src, "src", is);
    py::array out = as_array(out_o, "out");
    if (out.itemsize() != is || float_itemsize(out, "out") != is) {
      throw py::type_error("out must have src's dtype (" + py::str(src.dtype()).cast<std::string>() + "), got " +
                           py::str(out.dtype()).cast<std::string>());
    }
    if (out.ndim() != 2 || out.shape(0) != src.shape(1) || out.shape(1) != src.shape(0)) {
      throw py::value_error("out must have shape (" + std::to_string(src.shape(1)) + ", " +
                            std::to_string(src.shape(0)) + ") (src's transposed), got " + shape_str(out));
    }
    const int64_t ldd = row_blocks(out, "out", is);
    if (!out.writeable()) throw py::value_error("out must be writable");
    if (py::module_::import("numpy").attr("shares_memory")(out, src).cast<bool>()) {
      throw py::value_error("out must not overlap src");
    }
    const int64_t R = src.shape(0), C = src.shape(1);
    auto run = [&](auto zero) {
      using T = decltype(zero);
      const T* s = static_cast<const T*>(src.data());
      T* d = mptr<T>(out);
      py::gil_scoped_release nogil;
      transpose_cpu<T>(R, C, s, lds, d, ldd);
    };
    if (is == 4) run(0.0f);
    else run(0.0);
  }, py::arg("src"), py::arg("out"),
        "out = src.T in cache tiles on the thread pool (the rows of src and of out may be strided).");
  m.def("_packed_gemm", [](const py::array_t<float, py::array::c_style | py::array::forcecast>& a,
                           const py::array_t<float, py::array::c_style | py::array::forcecast>& b,
                           bool trans_a, bool pack_rows, bool accumulate, const std::string& precision) {
    // Test hook: C = op(A) @ B on the packed kernel, B packed by pack_b (from columns) or
    // pack_b_rows, A row-major (M, K) or stored transposed (K, M); accumulate adds onto C = 1.
    const bool bf16 = bind::read_precision(precision, 4, "a");
    if (bf16 && !cpu_has_avx512_bf16()) throw std::runtime_error("this CPU has no AVX512-BF16");
    if (!packed_gemm_enabled()) throw std::runtime_error("the packed kernel is off or unsupported");
    if (a.ndim() != 2 || b.ndim() != 2) throw py::value_error("a and b must have rank 2");
    const int64_t M = trans_a ? a.shape(1) : a.shape(0), K = trans_a ? a.shape(0) : a.shape(1);
    const int64_t N = b.shape(1);
    if (b.shape(0) != K) throw py::value_error("b must have K rows");
    const GemmPrecision prec = bf16 ? GemmPrecision::kBfloat16 : GemmPrecision::kFloat32;
    std::vector<float> packed(size_t(packed_b_size(K, N) + 16));
    const float* B = b.data();
    if (pack_rows) pack_b_rows(K, N, B, N, packed.data(), nullptr, prec);
    else pack_b(K, N, [&](int64_t n) { return B + n; }, N, packed.data(), prec);
    py::array_t<float> c({M, N});
    float* C = c.mutable_data();
    std::fill(C, C + M * N, accumulate ? 1.0f : 0.0f);
    if (trans_a) gemm_at_packed_b(M, N, K, a.data(), M, packed.data(), C, N, accumulate, nullptr, prec);
    else gemm_packed_b(M, N, K, a.data(), K, packed.data(), C, N, accumulate, nullptr, prec);
    return c;
  }, py::arg("a"), py::arg("b"), py::arg("trans_a") = false, py::arg("pack_rows") = false,
        py::arg("accumulate") = false, py::arg("precision") = "fp32");
  m.def("_has_avx512_bf16", &cpu_has_avx512_bf16);
  m.def("_amx_bf16_enabled", &amx_bf16_enabled,
        "Whether the bfloat16 GEMMs run on AMX tiles (CPU, OS permission and the test hook).");
  m.def("_set_amx_bf16", &set_amx_bf16_enabled, py::arg("on"),
        "Test hook: the bfloat16 GEMMs on AMX (when available) or on vdpbf16ps; returns the old setting.");
  m.def("precision_check", [](const std::string& precision, int itemsize, const std::string& owner) {
    return bind::read_precision(precision, itemsize, owner);
  }, py::arg("precision"), py::arg("itemsize"), py::arg("owner"),
        "The rule of `precision` for arrays of this itemsize (owner: the array named in errors).");
  m.def("lengths_check", [](const py::object& lengths, int64_t N, int64_t T) {
    bind::read_lengths(lengths, SeqShape{N, T, 1, 1}, "lengths");
  }, py::arg("lengths"), py::arg("N"), py::arg("T"),
        "The rule of the recurrent functions' lengths (for layers that take lengths without calling them).");
  m.def("grads_check", [](const py::object& grads, bool writable) {
    std::vector<py::array> arrays;
    check_grad_list(grads, writable, arrays);
  }, py::arg("grads"), py::arg("writable"),
        "The argument rules of global_norm (writable=False) and clip_grads (True), without running them.");
  m.def("global_norm", &global_norm, py::arg("grads"));
  m.def("clip_value", &clip_value, py::arg("grads"), py::arg("limit"),
        "Clamps every element of every array to [-limit, limit] in place (NaN stays NaN).");
  m.def("clip_grads", &clip_grads, py::arg("grads"), py::arg("max_norm"),
        py::arg("error_if_nonfinite") = true);
  m.def("weighted_sum", &weighted_sum, py::arg("out"), py::arg("inputs"), py::arg("weights"),
        "out = sum_k weights[k] * inputs[k] (summed in double, rounded once); returns the sum of "
        "squares of out.");
  m.def("sgd_update", &sgd_update, py::arg("params"), py::arg("grads"), py::arg("lr"), py::arg("scale") = 1.0,
        "p -= lr * g for every pair, in place, in one pass (numpy's result, bit for bit); with a "
        "scale, g is taken as g * scale rounded from double (clip_grads' scaling), not stored.");
  m.def("set_num_threads", [](int n) {
    if (n < 1) throw py::value_error("n must be >= 1, got " + std::to_string(n));
    set_num_threads(n);
  }, py::arg("n"));
  m.def("get_num_threads", &get_num_threads);
  m.def("matmul", &matmul, py::arg("a"), py::arg("b"), py::arg("out").none(true) = py::none(),
        py::arg("bias").none(true) = py::none(), py::arg("colsum").none(true) = py::none(),
        py::arg("precision") = "fp32",
        "a @ b (+ bias, added to every row) on pylstm's thread pool; a and b may be C- or "
        "F-contiguous (transposed views). colsum, when given, receives b.sum(axis=0), summed in "
        "double in the pass that packs b.");
  m.def("softmax_xent", &softmax_xent, py::arg("scores"), py::arg("labels"),
        py::arg("ignore_label"), py::arg("grad_scale").none(true),
        "Softmax cross-entropy. Returns (loss_sum, count, dscores or None).");
  m.def("_set_small_m_kernel", &set_packed_gemm_enabled, py::arg("on"),
        "Test hook: enable/disable the AVX-512 recurrent-step kernel; returns the old setting.");
  m.def("_small_m_kernel_enabled", &packed_gemm_enabled);
  m.def("_forward_workspace_size", [](int64_t N, int64_t T, int64_t D, int64_t H, bool save,
                                      int itemsize, const std::string& cell) {
    const SeqShape s{N, T, D, H};
    return with_cell(cell, [&](auto c) {
      using Cell = decltype(c);
      return itemsize == 4 ? seq_forward_cpu_workspace_size<Cell, float>(s, save)
                           : seq_forward_cpu_workspace_size<Cell, double>(s, save);
    });
  }, py::arg("N"), py::arg("T"), py::arg("D"), py::arg("H"), py::arg("save"), py::arg("itemsize"),
        py::arg("cell") = "lstm",
        "Test hook: scratch elements the CPU forward takes for this call.");
  m.def("_pool_stats", []() {
    const PoolStats st = pool_stats();
    py::dict d;
    d["runs"] = st.runs;
    d["parked_wakes"] = st.parked_wakes;
    d["moved_off_caller_cpu"] = st.moved;
    d["wake_latency_us"] = st.wake_latency_us;
    return d;
  }, "The thread pool's counters and its measured wake-up latency (diagnostics).");
  m.def("_set_openmp_runtime", [](uintptr_t parallel, uintptr_t thread_num, uintptr_t num_threads) {
    // The addresses of an OpenMP runtime's GOMP_parallel, omp_get_thread_num and
    // omp_get_num_threads, already loaded in this process (pylstm.torch passes PyTorch's), or
    // three zeros for the pool.
    if ((parallel == 0) != (thread_num == 0) || (parallel == 0) != (num_threads == 0)) {
      throw py::value_error("parallel, thread_num and num_threads must be all given or all 0");
    }
    set_openmp_runtime(reinterpret_cast<OmpParallelFn>(parallel), reinterpret_cast<OmpQueryFn>(thread_num),
                       reinterpret_cast<OmpQueryFn>(num_threads));
  }, py::arg("parallel"), py::arg("thread_num"), py::arg("num_threads"),
        "Run the CPU kernels' parallel work on a loaded OpenMP runtime (function addresses), or on "
        "pylstm's own pool (all 0).");
  m.def("_openmp_runtime_set", &openmp_runtime_set,
        "Whether the CPU kernels run their parallel work on an OpenMP runtime (_set_openmp_runtime).");
  m.def("_pool_stress", &pool_stress, py::arg("runs"), py::arg("max_threads"), py::arg("seed"),
        "Test hook: stress the thread pool (random thread counts, barriers, injected exceptions); "
        "returns (inconsistencies, exceptions caught).");
  m.def("_set_forward_schedule", [](const std::string& mode) {
    return set_mode_by_name(mode, {"auto", "projection-first", "step-projection"}, &set_forward_schedule);
  }, py::arg("mode"),
        "Test hook: the float32 forward schedule of the packed-weight kernel; returns the old one.");
  m.def("_set_weight_reading", [](const std::string& mode) {
    return set_mode_by_name(mode, {"auto", "packed", "in-place"}, &set_weight_reading);
  }, py::arg("mode"),
        "Test hook: whether the float32 kernel path packs the weights or reads them in place "
        "(the recurrent forward and matmul); returns the old setting.");
  m.def("_sigmoid", [](const py::object& x) { return cell_math_any(x, false); }, py::arg("x"));
  m.def("_tanh", [](const py::object& x) { return cell_math_any(x, true); }, py::arg("x"));
  m.def("blas_info", []() {
    return py::make_tuple(std::string(scipy_openblas_get_config()),
                          std::string(scipy_openblas_get_corename()));
  });
}
