// pybind11 module pylstm._cpu: validates every argument (rank, shapes, dtype, byte order,
// contiguity, writability), allocates outputs and scratch, releases the GIL and calls the CPU
// kernels of pylstm.h. Imported only by pylstm/_backend.py. Errors are TypeError / ValueError
// whose message starts with the argument's name.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cblas.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "gemm_small_m.h"
#include "lstm_cell.h"
#include "pylstm.h"

namespace py = pybind11;

namespace pylstm {
namespace {

std::string shape_str(const py::array& a) {
  std::ostringstream os;
  os << "(";
  for (py::ssize_t k = 0; k < a.ndim(); ++k) os << (k ? ", " : "") << a.shape(k);
  os << (a.ndim() == 1 ? ",)" : ")");
  return os.str();
}

std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// Returns obj as an ndarray, or raises TypeError naming the argument.
py::array as_array(const py::handle& obj, const char* name) {
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(std::string(name) + " must be a numpy.ndarray, got " +
                         py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
  }
  return py::reinterpret_borrow<py::array>(obj);
}

bool is_float_dtype(const py::array& a, int itemsize) {
  const py::dtype dt = a.dtype();
  const char bo = dt.byteorder();
  return dt.kind() == 'f' && dt.itemsize() == itemsize && (bo == '=' || bo == '|' ||
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
                                                            bo == '<'
#else
                                                            bo == '>'
#endif
                                                           );
}

// Full check of one array argument: dtype (the reference dtype's itemsize), rank, each extent
// (-1 = any), C-contiguity, and writability when the kernel writes into it.
void check_array(const py::array& a, const char* name, int itemsize,
                 std::initializer_list<int64_t> shape, bool writable = false,
                 const char* dtype_owner = "xs") {
  if (!is_float_dtype(a, itemsize)) {
    std::string want = itemsize == 4 ? "float32" : "float64";
    throw py::type_error(std::string(name) + " must have dtype " + want + " (the dtype of " +
                         dtype_owner + "), got " + dtype_str(a));
  }
  if (a.ndim() != py::ssize_t(shape.size())) {
    throw py::value_error(std::string(name) + " must have rank " + std::to_string(shape.size()) +
                          ", got rank " + std::to_string(a.ndim()) + " with shape " +
                          shape_str(a));
  }
  std::ostringstream want;
  want << "(";
  bool ok = true;
  int k = 0;
  for (int64_t e : shape) {
    want << (k ? ", " : "") << e;
    if (e >= 0 && a.shape(k) != e) ok = false;
    ++k;
  }
  want << (shape.size() == 1 ? ",)" : ")");
  if (!ok) {
    throw py::value_error(std::string(name) + " must have shape " + want.str() + ", got " +
                          shape_str(a));
  }
  if (!(a.flags() & py::array::c_style)) {
    throw py::value_error(std::string(name) +
                          " must be C-contiguous (use numpy.ascontiguousarray), got strides " +
                          py::str(a.attr("strides")).cast<std::string>());
  }
  if (writable && !a.writeable()) {
    throw py::value_error(std::string(name) + " must be writable, got a read-only array");
  }
}

void check_array_shape_only(const py::array& a, const char* name, std::initializer_list<int64_t> shape) {
  if (a.ndim() != py::ssize_t(shape.size())) {
    throw py::value_error(std::string(name) + " must have rank " + std::to_string(shape.size()) +
                          ", got shape " + shape_str(a));
  }
  int k = 0;
  for (int64_t e : shape) {
    if (e >= 0 && a.shape(k) != e) {
      throw py::value_error(std::string(name) + " must have " + std::to_string(e) +
                            " elements along axis " + std::to_string(k) + ", got shape " +
                            shape_str(a));
    }
    ++k;
  }
  if (!(a.flags() & py::array::c_style)) {
    throw py::value_error(std::string(name) + " must be C-contiguous");
  }
}

int float_itemsize(const py::array& a, const char* name) {
  if (is_float_dtype(a, 4)) return 4;
  if (is_float_dtype(a, 8)) return 8;
  throw py::type_error(std::string(name) + " must have dtype float32 or float64, got " +
                       dtype_str(a));
}

template <class T>
const T* cptr(const py::object& o) {
  return o.is_none() ? nullptr : static_cast<const T*>(py::reinterpret_borrow<py::array>(o).data());
}

template <class T>
T* mptr(py::array& a) {
  return static_cast<T*>(a.mutable_data());
}

template <class T>
py::array empty(std::vector<py::ssize_t> shape) {
  return py::array_t<T>(shape);
}

// Scratch memory for the kernels, kept per calling thread between calls and only grown: a
// fresh multi-megabyte allocation per call costs its page faults every time (measured: ~25 ms
// of an 85 ms backward at N,T,D,H = 64,100,256,256). Stays allocated until the thread exits.
template <class T>
T* cached_workspace(int64_t n) {
  thread_local std::vector<T> buf;
  if (int64_t(buf.size()) < n) {
    std::vector<T>().swap(buf);  // free the old block before allocating the larger one
    buf.resize(size_t(n));
  }
  return buf.data();
}

// Sizes of an LSTM call, read from xs and Wh and checked for consistency.
struct Dims {
  LstmShape s;
  int itemsize;
};

void check_positive(int64_t v, const char* what, const char* name, const py::array& a) {
  if (v < 1) {
    throw py::value_error(std::string(name) + ": " + what + " must be >= 1, got shape " +
                          shape_str(a));
  }
}

Dims read_dims(const py::object& xs_o, const py::object& Wx_o, const py::object& Wh_o,
               const py::object& b_o, const py::object& h0_o, const py::object& c0_o) {
  py::array xs = as_array(xs_o, "xs");
  const int is = float_itemsize(xs, "xs");
  if (xs.ndim() != 3) {
    throw py::value_error("xs must have rank 3 (N, T, D), got rank " + std::to_string(xs.ndim()) +
                          " with shape " + shape_str(xs));
  }
  py::array Wh = as_array(Wh_o, "Wh");
  if (Wh.ndim() != 2) {
    throw py::value_error("Wh must have rank 2 (H, 4H), got rank " + std::to_string(Wh.ndim()) +
                          " with shape " + shape_str(Wh));
  }
  Dims d{{xs.shape(0), xs.shape(1), xs.shape(2), Wh.shape(0)}, is};
  check_positive(d.s.N, "N (batch size)", "xs", xs);
  check_positive(d.s.T, "T (time steps)", "xs", xs);
  check_positive(d.s.D, "D (input size)", "xs", xs);
  check_positive(d.s.H, "H (hidden size)", "Wh", Wh);
  const int64_t N = d.s.N, T = d.s.T, D = d.s.D, H = d.s.H;
  check_array(xs, "xs", is, {N, T, D});
  check_array(Wh, "Wh", is, {H, 4 * H});
  check_array(as_array(Wx_o, "Wx"), "Wx", is, {D, 4 * H});
  check_array(as_array(b_o, "b"), "b", is, {4 * H});
  if (!h0_o.is_none()) check_array(as_array(h0_o, "h0"), "h0", is, {N, H});
  if (!c0_o.is_none()) check_array(as_array(c0_o, "c0"), "c0", is, {N, H});
  // BLAS takes 32-bit sizes and leading dimensions.
  const int64_t biggest = N * T * std::max(4 * H, D + H);
  if (biggest > INT_MAX || T * 4 * H > INT_MAX) {
    throw py::value_error("xs: N*T*max(4H, D+H) = " + std::to_string(biggest) +
                          " is too large for 32-bit BLAS indexing");
  }
  return d;
}

template <class T>
py::tuple forward_impl(const Dims& d, const py::object& xs, const py::object& Wx,
                       const py::object& Wh, const py::object& b, const py::object& h0,
                       const py::object& c0, bool save) {
  const auto& s = d.s;
  py::array hs = empty<T>({s.N, s.T, s.H});
  py::array hT = empty<T>({s.N, s.H});
  py::array cT = empty<T>({s.N, s.H});
  py::object gates = py::none(), cs = py::none();
  T* g_ptr = nullptr;
  T* cs_ptr = nullptr;
  if (save) {
    py::array g = empty<T>({s.N, s.T, 4 * s.H});
    py::array c = empty<T>({s.N, s.T, s.H});
    g_ptr = mptr<T>(g);
    cs_ptr = mptr<T>(c);
    gates = g;
    cs = c;
  }
  T* work = cached_workspace<T>(lstm_forward_workspace_size(s, save) + 1);
  const T *xs_p = cptr<T>(xs), *Wx_p = cptr<T>(Wx), *Wh_p = cptr<T>(Wh), *b_p = cptr<T>(b),
          *h0_p = cptr<T>(h0), *c0_p = cptr<T>(c0);
  T *hs_p = mptr<T>(hs), *hT_p = mptr<T>(hT), *cT_p = mptr<T>(cT);
  {
    py::gil_scoped_release nogil;
    lstm_forward_cpu<T>(s, xs_p, h0_p, c0_p, Wx_p, Wh_p, b_p, hs_p, hT_p, cT_p, g_ptr, cs_ptr,
                        work);
  }
  return py::make_tuple(hs, hT, cT, gates, cs);
}

py::tuple lstm_forward(const py::object& xs, const py::object& Wx, const py::object& Wh,
                       const py::object& b, const py::object& h0, const py::object& c0,
                       bool save_for_backward) {
  const Dims d = read_dims(xs, Wx, Wh, b, h0, c0);
  if (d.itemsize == 4) return forward_impl<float>(d, xs, Wx, Wh, b, h0, c0, save_for_backward);
  return forward_impl<double>(d, xs, Wx, Wh, b, h0, c0, save_for_backward);
}

template <class T>
py::tuple backward_impl(const Dims& d, const py::object& xs, const py::object& h0,
                        const py::object& c0, const py::object& Wx, const py::object& Wh,
                        const py::object& hs, const py::object& gates, const py::object& cs,
                        const py::object& dhs, const py::object& dhT, const py::object& dcT) {
  const auto& s = d.s;
  py::array dxs = empty<T>({s.N, s.T, s.D});
  py::array dh0 = empty<T>({s.N, s.H});
  py::array dc0 = empty<T>({s.N, s.H});
  py::array dW = empty<T>({s.D + s.H, 4 * s.H});
  py::array db = empty<T>({4 * s.H});
  T* work = cached_workspace<T>(lstm_backward_workspace_size(s));
  const T *xs_p = cptr<T>(xs), *h0_p = cptr<T>(h0), *c0_p = cptr<T>(c0), *Wx_p = cptr<T>(Wx),
          *Wh_p = cptr<T>(Wh), *hs_p = cptr<T>(hs), *g_p = cptr<T>(gates), *cs_p = cptr<T>(cs),
          *dhs_p = cptr<T>(dhs), *dhT_p = cptr<T>(dhT), *dcT_p = cptr<T>(dcT);
  T *dxs_p = mptr<T>(dxs), *dh0_p = mptr<T>(dh0), *dc0_p = mptr<T>(dc0), *dW_p = mptr<T>(dW),
    *db_p = mptr<T>(db);
  {
    py::gil_scoped_release nogil;
    lstm_backward_cpu<T>(s, xs_p, h0_p, c0_p, Wx_p, Wh_p, hs_p, g_p, cs_p, dhs_p, dhT_p, dcT_p,
                         dxs_p, dh0_p, dc0_p, dW_p, db_p, work);
  }
  // dWx and dWh are C-contiguous views of the merged (D+H, 4H) result.
  py::object slice = py::module_::import("builtins").attr("slice");
  py::object dWx = dW[slice(py::none(), s.D, py::none())];
  py::object dWh = dW[slice(s.D, py::none(), py::none())];
  return py::make_tuple(dxs, dh0, dc0, dWx, dWh, db);
}

py::tuple lstm_backward(const py::object& xs, const py::object& h0, const py::object& c0,
                        const py::object& Wx, const py::object& Wh, const py::object& b,
                        const py::object& hs, const py::object& gates, const py::object& cs,
                        const py::object& dhs, const py::object& dhT, const py::object& dcT) {
  const Dims d = read_dims(xs, Wx, Wh, b, h0, c0);
  const auto& s = d.s;
  const int is = d.itemsize;
  check_array(as_array(hs, "hs"), "hs", is, {s.N, s.T, s.H});
  check_array(as_array(gates, "gates"), "gates", is, {s.N, s.T, 4 * s.H});
  check_array(as_array(cs, "cs"), "cs", is, {s.N, s.T, s.H});
  check_array(as_array(dhs, "dhs"), "dhs", is, {s.N, s.T, s.H});
  if (!dhT.is_none()) check_array(as_array(dhT, "dhT"), "dhT", is, {s.N, s.H});
  if (!dcT.is_none()) check_array(as_array(dcT, "dcT"), "dcT", is, {s.N, s.H});
  if (is == 4) return backward_impl<float>(d, xs, h0, c0, Wx, Wh, hs, gates, cs, dhs, dhT, dcT);
  return backward_impl<double>(d, xs, h0, c0, Wx, Wh, hs, gates, cs, dhs, dhT, dcT);
}

// Checks a gradient list: a list/tuple of writable (when scaling) C-contiguous arrays of one
// float dtype. Returns the itemsize (0 for an empty list).
int check_grad_list(const py::object& grads, bool writable) {
  if (!py::isinstance<py::list>(grads) && !py::isinstance<py::tuple>(grads)) {
    throw py::type_error("grads must be a list or tuple of numpy arrays, got " +
                         py::str(py::type::of(grads).attr("__name__")).cast<std::string>());
  }
  int is = 0;
  std::string first_dtype;
  py::ssize_t k = 0;
  for (const py::handle& h : grads) {
    const std::string name = "grads[" + std::to_string(k) + "]";
    py::array a = as_array(h, name.c_str());
    const int this_is = float_itemsize(a, name.c_str());
    if (is == 0) {
      is = this_is;
      first_dtype = dtype_str(a);
    } else if (this_is != is) {
      throw py::type_error(name + " has dtype " + dtype_str(a) + " but grads[0] has " +
                           first_dtype + ": all arrays in grads must share one dtype");
    }
    if (!(a.flags() & py::array::c_style)) {
      throw py::value_error(name + " must be C-contiguous, got strides " +
                            py::str(a.attr("strides")).cast<std::string>());
    }
    if (writable && !a.writeable()) {
      throw py::value_error(name + " must be writable (clipping scales it in place), got a "
                                   "read-only array");
    }
    ++k;
  }
  return is;
}

template <class T>
std::vector<Span<T>> spans(const py::object& grads) {
  std::vector<Span<T>> out;
  for (const py::handle& h : grads) {
    py::array a = py::reinterpret_borrow<py::array>(h);
    out.push_back({static_cast<T*>(a.mutable_data()), int64_t(a.size())});
  }
  return out;
}

template <class T>
double norm_of(const py::object& grads) {
  auto sp = spans<T>(grads);
  py::gil_scoped_release nogil;
  return global_norm_cpu<T>(sp);
}

double global_norm(const py::object& grads) {
  const int is = check_grad_list(grads, false);
  if (is == 0) return 0.0;
  return is == 4 ? norm_of<float>(grads) : norm_of<double>(grads);
}

double clip_grads(const py::object& grads, double max_norm, bool error_if_nonfinite) {
  if (!(max_norm > 0.0) || !std::isfinite(max_norm)) {
    throw py::value_error("max_norm must be a finite number > 0, got " + std::to_string(max_norm));
  }
  const int is = check_grad_list(grads, true);
  if (is == 0) return 0.0;
  const double total = is == 4 ? norm_of<float>(grads) : norm_of<double>(grads);
  if (!std::isfinite(total)) {
    if (error_if_nonfinite) {
      const std::string msg = "grads: the global norm is " + std::to_string(total) +
                              " (NaN or inf in the gradients); nothing was scaled";
      PyErr_SetString(PyExc_FloatingPointError, msg.c_str());
      throw py::error_already_set();
    }
    return total;
  }
  const double rate = max_norm / (total + 1e-6);
  if (rate < 1.0) {
    if (is == 4) {
      auto sp = spans<float>(grads);
      py::gil_scoped_release nogil;
      scale_arrays_cpu<float>(sp, rate);
    } else {
      auto sp = spans<double>(grads);
      py::gil_scoped_release nogil;
      scale_arrays_cpu<double>(sp, rate);
    }
  }
  return total;
}

// Test hook: applies the kernels' own sigmoid or tanh (lstm_cell.h) elementwise, so the tests
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
  if (!is_float_dtype(a, itemsize)) {
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
void matmul_impl(const Mat& A, const Mat& B, py::array& out) {
  const T* a = static_cast<const T*>(A.a.data());
  const T* b = static_cast<const T*>(B.a.data());
  T* c = mptr<T>(out);
  py::gil_scoped_release nogil;
  matmul_cpu<T>(A.trans, B.trans, A.rows, B.cols, A.cols, a, A.ld, b, B.ld, T(0), c,
                std::max<int64_t>(B.cols, 1));
}

py::array matmul(const py::object& a_o, const py::object& b_o, const py::object& out_o) {
  py::array a0 = as_array(a_o, "a");
  const int is = float_itemsize(a0, "a");
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
  if (is == 4) matmul_impl<float>(A, B, out);
  else matmul_impl<double>(A, B, out);
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
  m.def("lstm_forward", &lstm_forward, py::arg("xs"), py::arg("Wx"), py::arg("Wh"), py::arg("b"),
        py::arg("h0").none(true), py::arg("c0").none(true), py::arg("save_for_backward"),
        "Fused LSTM forward. Returns (hs, hT, cT, gates, cs); gates and cs are None when "
        "save_for_backward is False.");
  m.def("lstm_backward", &lstm_backward, py::arg("xs"), py::arg("h0").none(true),
        py::arg("c0").none(true), py::arg("Wx"), py::arg("Wh"), py::arg("b"), py::arg("hs"),
        py::arg("gates"), py::arg("cs"), py::arg("dhs"), py::arg("dhT").none(true),
        py::arg("dcT").none(true), "Fused LSTM backward. Returns (dxs, dh0, dc0, dWx, dWh, db).");
  m.def("global_norm", &global_norm, py::arg("grads"));
  m.def("clip_grads", &clip_grads, py::arg("grads"), py::arg("max_norm"),
        py::arg("error_if_nonfinite") = true);
  m.def("set_num_threads", [](int n) {
    if (n < 1) throw py::value_error("n must be >= 1, got " + std::to_string(n));
    set_num_threads(n);
  }, py::arg("n"));
  m.def("get_num_threads", &get_num_threads);
  m.def("matmul", &matmul, py::arg("a"), py::arg("b"), py::arg("out").none(true) = py::none(),
        "a @ b on pylstm's thread pool; a and b may be C- or F-contiguous (transposed views).");
  m.def("softmax_xent", &softmax_xent, py::arg("scores"), py::arg("labels"),
        py::arg("ignore_label"), py::arg("grad_scale").none(true),
        "Softmax cross-entropy. Returns (loss_sum, count, dscores or None).");
  m.def("_set_small_m_kernel", &set_small_m_kernel, py::arg("on"),
        "Test hook: enable/disable the AVX-512 recurrent-step kernel; returns the old setting.");
  m.def("_small_m_kernel_enabled", &small_m_kernel_enabled);
  m.def("_sigmoid", [](const py::object& x) { return cell_math_any(x, false); }, py::arg("x"));
  m.def("_tanh", [](const py::object& x) { return cell_math_any(x, true); }, py::arg("x"));
  m.def("blas_info", []() {
    return py::make_tuple(std::string(scipy_openblas_get_config()),
                          std::string(scipy_openblas_get_corename()));
  });
}
