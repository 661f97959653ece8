// Argument checking and the recurrent-layer entry points of the CPU module (bind/cpu.cpp), for
// every cell of cells/registry.h: rank, shapes, dtype, byte order, contiguity and writability
// are validated, outputs and scratch allocated, the GIL released, and the driver called.
// Every error is a TypeError / ValueError whose message starts with the argument's name.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "cells/registry.h"
#include "cpu/api.h"

namespace pylstm {
namespace bind {

namespace py = pybind11;

inline std::string shape_str(const py::array& a) {
  std::ostringstream os;
  os << "(";
  for (py::ssize_t k = 0; k < a.ndim(); ++k) os << (k ? ", " : "") << a.shape(k);
  os << (a.ndim() == 1 ? ",)" : ")");
  return os.str();
}

inline std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// Returns obj as an ndarray, or raises TypeError naming the argument.
inline py::array as_array(const py::handle& obj, const char* name) {
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(std::string(name) + " must be a numpy.ndarray, got " +
                         py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
  }
  return py::reinterpret_borrow<py::array>(obj);
}

inline bool is_float_dtype(const py::array& a, int itemsize) {
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
inline void check_array(const py::array& a, const char* name, int itemsize,
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

inline void check_array_shape_only(const py::array& a, const char* name, std::initializer_list<int64_t> shape) {
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

inline int float_itemsize(const py::array& a, const char* name) {
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

// Sizes of a recurrent-layer call, read from xs and Wh and checked for consistency.
struct Dims {
  SeqShape s;
  int itemsize;
};

inline void check_positive(int64_t v, const char* what, const char* name, const py::array& a) {
  if (v < 1) {
    throw py::value_error(std::string(name) + ": " + what + " must be >= 1, got shape " +
                          shape_str(a));
  }
}

// A cell state's argument (c0, dcT, cs) given to a cell without one.
inline void check_no_cell_state(const py::object& o, const char* name, const std::string& cell) {
  if (!o.is_none()) {
    throw py::value_error(std::string(name) + " must be None: the " + cell +
                          " cell has no cell state");
  }
}

template <class Cell>
Dims read_dims(const std::string& cell, const py::object& xs_o, const py::object& Wx_o,
               const py::object& Wh_o, const py::object& b_o, const py::object& h0_o,
               const py::object& c0_o) {
  constexpr int64_t kG = Cell::kGates;
  const std::string gh = kG == 1 ? "H" : std::to_string(kG) + "H";
  py::array xs = as_array(xs_o, "xs");
  const int is = float_itemsize(xs, "xs");
  if (xs.ndim() != 3) {
    throw py::value_error("xs must have rank 3 (N, T, D), got rank " + std::to_string(xs.ndim()) +
                          " with shape " + shape_str(xs));
  }
  py::array Wh = as_array(Wh_o, "Wh");
  if (Wh.ndim() != 2) {
    throw py::value_error("Wh must have rank 2 (H, " + gh + "), got rank " +
                          std::to_string(Wh.ndim()) + " with shape " + shape_str(Wh));
  }
  Dims d{{xs.shape(0), xs.shape(1), xs.shape(2), Wh.shape(0)}, is};
  check_positive(d.s.N, "N (batch size)", "xs", xs);
  check_positive(d.s.T, "T (time steps)", "xs", xs);
  check_positive(d.s.D, "D (input size)", "xs", xs);
  check_positive(d.s.H, "H (hidden size)", "Wh", Wh);
  const int64_t N = d.s.N, T = d.s.T, D = d.s.D, H = d.s.H;
  check_array(xs, "xs", is, {N, T, D});
  check_array(Wh, "Wh", is, {H, kG * H});
  check_array(as_array(Wx_o, "Wx"), "Wx", is, {D, kG * H});
  check_array(as_array(b_o, "b"), "b", is, {kG * H});
  if (!h0_o.is_none()) check_array(as_array(h0_o, "h0"), "h0", is, {N, H});
  if (Cell::kHasCellState) {
    if (!c0_o.is_none()) check_array(as_array(c0_o, "c0"), "c0", is, {N, H});
  } else {
    check_no_cell_state(c0_o, "c0", cell);
  }
  // BLAS takes 32-bit sizes and leading dimensions.
  const int64_t biggest = N * T * std::max(kG * H, D + H);
  if (biggest > INT_MAX || T * kG * H > INT_MAX) {
    throw py::value_error("xs: N*T*max(" + gh + ", D+H) = " + std::to_string(biggest) +
                          " is too large for 32-bit BLAS indexing");
  }
  return d;
}

template <class Cell, class T>
py::tuple forward_impl(const Dims& d, const py::object& xs, const py::object& Wx,
                       const py::object& Wh, const py::object& b, const py::object& h0,
                       const py::object& c0, bool save) {
  const auto& s = d.s;
  const int64_t G = Cell::kGates * s.H;
  py::array hs = empty<T>({s.N, s.T, s.H});
  py::array hT = empty<T>({s.N, s.H});
  py::object cT = py::none(), gates = py::none(), cs = py::none();
  ForwardArgs<T> a{s, cptr<T>(xs), cptr<T>(h0), cptr<T>(c0), cptr<T>(Wx), cptr<T>(Wh),
                   cptr<T>(b), mptr<T>(hs), mptr<T>(hT), nullptr, nullptr, nullptr, nullptr};
  if (Cell::kHasCellState) {
    py::array c = empty<T>({s.N, s.H});
    a.cT = mptr<T>(c);
    cT = c;
  }
  if (save) {
    py::array g = empty<T>({s.N, s.T, G});
    a.gates = mptr<T>(g);
    gates = g;
    if (Cell::kHasCellState) {
      py::array c = empty<T>({s.N, s.T, s.H});
      a.cs = mptr<T>(c);
      cs = c;
    }
  }
  a.work_size = seq_forward_cpu_workspace_size<Cell, T>(s, save);
  a.work = cached_workspace<T>(a.work_size + 1);
  {
    py::gil_scoped_release nogil;
    seq_forward_cpu<Cell, T>(a);
  }
  return py::make_tuple(hs, hT, cT, gates, cs);
}

// forward(xs, Wx, Wh, b, h0, c0, save_for_backward, cell) -> (hs, hT, cT, gates, cs); cT and cs
// are None for a cell without a cell state, gates and cs when not saving.
inline py::tuple seq_forward(const py::object& xs, const py::object& Wx, const py::object& Wh,
                             const py::object& b, const py::object& h0, const py::object& c0,
                             bool save_for_backward, const std::string& cell) {
  return with_cell(cell, [&](auto c) {
    using Cell = decltype(c);
    const Dims d = read_dims<Cell>(cell, xs, Wx, Wh, b, h0, c0);
    if (d.itemsize == 4) return forward_impl<Cell, float>(d, xs, Wx, Wh, b, h0, c0, save_for_backward);
    return forward_impl<Cell, double>(d, xs, Wx, Wh, b, h0, c0, save_for_backward);
  });
}

template <class Cell, class T>
py::tuple backward_impl(const Dims& d, const py::object& xs, const py::object& h0,
                        const py::object& c0, const py::object& Wx, const py::object& Wh,
                        const py::object& hs, const py::object& gates, const py::object& cs,
                        const py::object& dhs, const py::object& dhT, const py::object& dcT) {
  const auto& s = d.s;
  const int64_t G = Cell::kGates * s.H;
  py::array dxs = empty<T>({s.N, s.T, s.D});
  py::array dh0 = empty<T>({s.N, s.H});
  py::object dc0 = py::none();
  py::array dW = empty<T>({s.D + s.H, G});
  py::array db = empty<T>({G});
  BackwardArgs<T> a{s, cptr<T>(xs), cptr<T>(h0), cptr<T>(c0), cptr<T>(Wx), cptr<T>(Wh),
                    cptr<T>(hs), cptr<T>(gates), cptr<T>(cs), cptr<T>(dhs), cptr<T>(dhT),
                    cptr<T>(dcT), mptr<T>(dxs), mptr<T>(dh0), nullptr, mptr<T>(dW),
                    mptr<T>(db), nullptr};
  if (Cell::kHasCellState) {
    py::array c = empty<T>({s.N, s.H});
    a.dc0 = mptr<T>(c);
    dc0 = c;
  }
  a.work = cached_workspace<T>(seq_backward_workspace_size<Cell>(s));
  {
    py::gil_scoped_release nogil;
    seq_backward_cpu<Cell, T>(a);
  }
  // dWx and dWh are C-contiguous views of the merged (D+H, G*H) result.
  py::object slice = py::module_::import("builtins").attr("slice");
  py::object dWx = dW[slice(py::none(), s.D, py::none())];
  py::object dWh = dW[slice(s.D, py::none(), py::none())];
  return py::make_tuple(dxs, dh0, dc0, dWx, dWh, db);
}

// backward(...) -> (dxs, dh0, dc0, dWx, dWh, db); dc0 is None for a cell without a cell state.
inline py::tuple seq_backward(const py::object& xs, const py::object& h0, const py::object& c0,
                              const py::object& Wx, const py::object& Wh, const py::object& b,
                              const py::object& hs, const py::object& gates, const py::object& cs,
                              const py::object& dhs, const py::object& dhT, const py::object& dcT,
                              const std::string& cell) {
  return with_cell(cell, [&](auto c) {
    using Cell = decltype(c);
    const Dims d = read_dims<Cell>(cell, xs, Wx, Wh, b, h0, c0);
    const auto& s = d.s;
    const int is = d.itemsize;
    check_array(as_array(hs, "hs"), "hs", is, {s.N, s.T, s.H});
    check_array(as_array(gates, "gates"), "gates", is, {s.N, s.T, Cell::kGates * s.H});
    if (Cell::kHasCellState) {
      check_array(as_array(cs, "cs"), "cs", is, {s.N, s.T, s.H});
    } else {
      check_no_cell_state(cs, "cs", cell);
      check_no_cell_state(dcT, "dcT", cell);
    }
    check_array(as_array(dhs, "dhs"), "dhs", is, {s.N, s.T, s.H});
    if (!dhT.is_none()) check_array(as_array(dhT, "dhT"), "dhT", is, {s.N, s.H});
    if (!dcT.is_none()) check_array(as_array(dcT, "dcT"), "dcT", is, {s.N, s.H});
    if (is == 4) return backward_impl<Cell, float>(d, xs, h0, c0, Wx, Wh, hs, gates, cs, dhs, dhT, dcT);
    return backward_impl<Cell, double>(d, xs, h0, c0, Wx, Wh, hs, gates, cs, dhs, dhT, dcT);
  });
}


// A validated gradient list: the arrays themselves (held, so neither the list nor another
// thread can free or re-view them into something else while the GIL is released) and the spans
// both clipping passes use. The spans are taken once, at validation: re-reading the arrays after
// the GIL was released would see whatever another thread did to them meanwhile (a float32 array
// re-viewed as float16 has twice the elements, and scaling those writes past its buffer).
template <class T>
struct GradList {
  std::vector<py::array> arrays;
  std::vector<Span<T>> spans;
};

// Checks a gradient list: a list/tuple of writable (when scaling) C-contiguous arrays of one
// float dtype. Returns the itemsize (0 for an empty list) and fills `arrays` with the arrays
// (references held).
inline int check_grad_list(const py::object& grads, bool writable, std::vector<py::array>& arrays) {
  if (!py::isinstance<py::list>(grads) && !py::isinstance<py::tuple>(grads)) {
    throw py::type_error("grads must be a list or tuple of numpy arrays, got " +
                         py::str(py::type::of(grads).attr("__name__")).cast<std::string>());
  }
  int is = 0;
  std::string first_dtype;
  py::ssize_t k = 0;
  arrays.clear();
  for (const py::handle& h : py::tuple(grads)) {  // one snapshot of the list's items
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
    arrays.push_back(a);
    ++k;
  }
  return is;
}

// The spans of arrays validated by check_grad_list (their itemsize is sizeof(T)), read now,
// with the GIL held.
template <class T>
GradList<T> grad_spans(std::vector<py::array> arrays) {
  GradList<T> out;
  for (const py::array& a : arrays) {
    // data(), not mutable_data(): the norm alone reads read-only arrays too (clipping checked
    // writability when it validated the list)
    out.spans.push_back({const_cast<T*>(static_cast<const T*>(a.data())),
                         int64_t(a.nbytes() / py::ssize_t(sizeof(T)))});
  }
  out.arrays = std::move(arrays);
  return out;
}

inline void check_max_norm(double max_norm) {
  if (!(max_norm > 0.0) || !std::isfinite(max_norm)) {
    throw py::value_error("max_norm must be a finite number > 0, got " + std::to_string(max_norm));
  }
}

}  // namespace bind
}  // namespace pylstm
