// The recurrent-layer entry points of the CPU module (bind/cpu.cpp), for every cell of
// cells/registry.h: NumPy arrays described for the shared rules (arg_rules.h), outputs and
// scratch allocated, the GIL released, and the driver called.
// Every error is a TypeError / ValueError whose message starts with the argument's name.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "bind/arg_rules.h"
#include "cpu/packed_gemm.h"
#include "cells/registry.h"
#include "cpu/api.h"

namespace pylstm {
namespace bind {

namespace py = pybind11;

inline std::string shape_str(const py::array& a) {
  return shape_str(std::vector<int64_t>(a.shape(), a.shape() + a.ndim()));
}

inline std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// Returns obj as an ndarray, or raises TypeError naming the argument.
inline py::array as_array(const py::handle& obj, const std::string& name) {
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(name + " must be a numpy.ndarray, got " +
                         py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
  }
  return py::reinterpret_borrow<py::array>(obj);
}

// A NumPy array as the shared rules (arg_rules.h) see it.
inline ArgView view_of(const py::array& a, const std::string& name) {
  ArgView v;
  v.name = name;
  v.present = true;
  const py::dtype dt = a.dtype();
  v.kind = dt.kind();
  v.itemsize = int(dt.itemsize());
  const char bo = dt.byteorder();
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  v.native_order = bo == '=' || bo == '|' || bo == '<';
#else
  v.native_order = bo == '=' || bo == '|' || bo == '>';
#endif
  // the dtype's name, for messages: the common ones without asking NumPy (its dtype.__str__ is
  // Python code, a noticeable share of a small call when taken for every argument)
  v.dtype = v.kind == 'f' && v.native_order && v.itemsize == 4   ? "float32"
            : v.kind == 'f' && v.native_order && v.itemsize == 8 ? "float64"
                                                                  : dtype_str(a);
  v.shape.assign(a.shape(), a.shape() + a.ndim());
  v.c_contiguous = (a.flags() & py::array::c_style) != 0;
  if (!v.c_contiguous) v.strides = py::str(a.attr("strides")).cast<std::string>();
  v.writable = a.writeable();
  return v;
}

// An argument that must be an array (TypeError naming it otherwise), or may be None (absent).
inline ArgView view_arg(const py::handle& obj, const std::string& name) {
  return view_of(as_array(obj, name), name);
}
inline ArgView view_opt(const py::object& obj, const std::string& name) {
  if (obj.is_none()) {
    ArgView v;
    v.name = name;
    return v;
  }
  return view_arg(obj, name);
}

// Full check of one array argument (arg_rules.h's check_view on a NumPy array).
inline void check_array(const py::array& a, const std::string& name, int itemsize,
                        const std::vector<int64_t>& shape, bool writable = false,
                        const std::string& dtype_owner = "xs") {
  check_view(view_of(a, name), itemsize, shape, writable, dtype_owner);
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

inline int float_itemsize(const py::array& a, const std::string& name) {
  return float_itemsize(view_of(a, name));
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
// fresh multi-megabyte allocation per call costs its page faults every time (a large share of
// a backward call). Stays allocated until the thread exits.
template <class T>
T* cached_workspace(int64_t n) {
  thread_local std::vector<T> buf;
  if (int64_t(buf.size()) < n) {
    std::vector<T>().swap(buf);  // free the old block before allocating the larger one
    buf.resize(size_t(n));
  }
  return buf.data();
}

// Sizes of a recurrent-layer call, from the shared rules.
struct Dims {
  SeqShape s;
  int itemsize;
  bool bf16 = false;
  // The checked lengths, copied (the array could change while the GIL is released), or empty.
  std::vector<int64_t> lengths;
  const int64_t* lens() const { return lengths.empty() ? nullptr : lengths.data(); }
};

// The inputs of a forward call checked by the shared rules; names get `prefix` ("cache." when
// the arrays come from a cache).
inline Dims read_dims(const CellFacts& c, const py::object& xs, const py::object& Wx,
                      const py::object& Wh, const py::object& b, const py::object& h0,
                      const py::object& c0, const py::object& P, const std::string& prefix = "",
                      const py::object& lengths = py::none(), const std::string& precision = "fp32") {
  Dims d;
  // xs and Wh first: the rules read the sizes from them (and name them in errors)
  const ArgView vxs = view_arg(xs, prefix + "xs"), vWh = view_arg(Wh, prefix + "Wh");
  float_itemsize(vxs);
  const ArgView vWx = view_arg(Wx, prefix + "Wx"), vb = view_arg(b, prefix + "b");
  d.s = check_seq_inputs(c, vxs, vWx, vWh, vb, view_opt(h0, prefix + "h0"),
                         view_opt(c0, prefix + "c0"), view_opt(P, prefix + "P"), &d.itemsize);
  d.lengths = read_lengths(lengths, d.s, prefix + "lengths");
  d.bf16 = read_precision(precision, d.itemsize, prefix + "xs");
  return d;
}

// The bfloat16 GEMMs run on the packed-weight kernel with AVX512-BF16: a clear error otherwise.
inline void require_bf16_kernel(const Dims& d) {
  if (!d.bf16) return;
  if (!cpu_has_avx512_bf16()) {
    throw std::runtime_error("precision='bf16' needs a CPU with AVX512-BF16 (the avx512_bf16 flag in "
                             "/proc/cpuinfo; vdpbf16ps), which this CPU lacks: use precision='fp32'");
  }
  if (!packed_gemm_enabled()) {
    throw std::runtime_error("precision='bf16' needs the packed-weight kernel, which is switched off "
                             "(_set_small_m_kernel(False))");
  }
}

template <class Cell, class T>
py::tuple forward_impl(const Dims& d, const py::object& xs, const py::object& Wx,
                       const py::object& Wh, const py::object& b, const py::object& h0,
                       const py::object& c0, const py::object& P, bool save, bool reverse) {
  const auto& s = d.s;
  const int64_t GS = CellCall<Cell>::kS * s.H;
  py::array hs = empty<T>({s.N, s.T, s.H});
  py::array hT = empty<T>({s.N, s.H});
  py::object cT = py::none(), gates = py::none(), cs = py::none();
  ForwardArgs<T> a{s, cptr<T>(xs), cptr<T>(h0), cptr<T>(c0), cptr<T>(Wx), cptr<T>(Wh),
                   cptr<T>(b), mptr<T>(hs), mptr<T>(hT), nullptr, nullptr, nullptr, nullptr};
  a.P = cptr<T>(P);
  a.lengths = d.lens();
  a.reverse = reverse;
  a.bf16 = d.bf16;
  require_bf16_kernel(d);
  if (Cell::kHasCellState) {
    py::array c = empty<T>({s.N, s.H});
    a.cT = mptr<T>(c);
    cT = c;
  }
  if (save) {
    py::array g = empty<T>({s.N, s.T, GS});
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

// forward(xs, Wx, Wh, b, h0, c0, save_for_backward, cell, P) -> (hs, hT, cT, gates, cs); cT and
// cs are None for a cell without a cell state, gates and cs when not saving.
inline py::tuple seq_forward(const py::object& xs, const py::object& Wx, const py::object& Wh,
                             const py::object& b, const py::object& h0, const py::object& c0,
                             bool save_for_backward, const std::string& cell, const py::object& P,
                             const py::object& lengths, bool reverse, const std::string& precision) {
  const Dims d = read_dims(cell_facts(cell), xs, Wx, Wh, b, h0, c0, P, "", lengths, precision);
  return with_cell(cell, [&](auto c) {
    using Cell = decltype(c);
    if (d.itemsize == 4) return forward_impl<Cell, float>(d, xs, Wx, Wh, b, h0, c0, P, save_for_backward, reverse);
    return forward_impl<Cell, double>(d, xs, Wx, Wh, b, h0, c0, P, save_for_backward, reverse);
  });
}

// forward_check(xs, Wx, Wh, b, h0, c0, cell, prefix, P) -> (N, T, D, H, itemsize): the rules of
// a forward call, without running it (the reference backend's checks).
inline py::tuple forward_check(const py::object& xs, const py::object& Wx, const py::object& Wh,
                               const py::object& b, const py::object& h0, const py::object& c0,
                               const std::string& cell, const std::string& prefix,
                               const py::object& P, const py::object& lengths, const std::string& precision) {
  const Dims d = read_dims(cell_facts(cell), xs, Wx, Wh, b, h0, c0, P, prefix, lengths, precision);
  return py::make_tuple(d.s.N, d.s.T, d.s.D, d.s.H, d.itemsize);
}

template <class Cell, class T>
py::tuple backward_impl(const Dims& d, const py::object& xs, const py::object& h0,
                        const py::object& c0, const py::object& Wx, const py::object& Wh,
                        const py::object& hs, const py::object& gates, const py::object& cs,
                        const py::object& dhs, const py::object& dhT, const py::object& dcT,
                        const py::object& P, bool reverse) {
  const auto& s = d.s;
  const int64_t G = Cell::kGates * s.H;
  py::array dxs = empty<T>({s.N, s.T, s.D});
  py::array dh0 = empty<T>({s.N, s.H});
  py::object dc0 = py::none(), dP = py::none();
  py::array dW = empty<T>({s.D + s.H, G});
  py::array db = empty<T>({G});
  BackwardArgs<T> a{s, cptr<T>(xs), cptr<T>(h0), cptr<T>(c0), cptr<T>(Wx), cptr<T>(Wh),
                    cptr<T>(hs), cptr<T>(gates), cptr<T>(cs), cptr<T>(dhs), cptr<T>(dhT),
                    cptr<T>(dcT), mptr<T>(dxs), mptr<T>(dh0), nullptr, mptr<T>(dW),
                    mptr<T>(db), nullptr};
  a.lengths = d.lens();
  a.reverse = reverse;
  a.bf16 = d.bf16;
  require_bf16_kernel(d);
  if (Cell::kHasCellState) {
    py::array c = empty<T>({s.N, s.H});
    a.dc0 = mptr<T>(c);
    dc0 = c;
  }
  if (Cell::kUnitParams > 0) {
    py::array p = Cell::kUnitParams == 1 ? empty<T>({s.H}) : empty<T>({int64_t(Cell::kUnitParams), s.H});
    a.P = cptr<T>(P);
    a.dP = mptr<T>(p);
    dP = p;
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
  return py::make_tuple(dxs, dh0, dc0, dWx, dWh, db, dP);
}

// The rules of a backward call: the forward's inputs and saved arrays (named with `prefix`,
// "cache." when they come from a cache) and the upstream gradients.
inline Dims check_backward(const CellFacts& c, const py::object& xs, const py::object& h0,
                           const py::object& c0, const py::object& Wx, const py::object& Wh,
                           const py::object& b, const py::object& hs, const py::object& gates,
                           const py::object& cs, const py::object& dhs, const py::object& dhT,
                           const py::object& dcT, const py::object& P, const std::string& prefix,
                           const py::object& lengths, const std::string& precision) {
  Dims d = read_dims(c, xs, Wx, Wh, b, h0, c0, P, prefix, lengths, precision);
  check_seq_saved(c, d.s, d.itemsize, prefix + "xs", view_arg(hs, prefix + "hs"),
                  view_arg(gates, prefix + "gates"),
                  c.has_c ? view_arg(cs, prefix + "cs") : view_opt(cs, prefix + "cs"),
                  view_arg(dhs, "dhs"), view_opt(dhT, "dhT"), view_opt(dcT, "dcT"));
  return d;
}

// backward(...) -> (dxs, dh0, dc0, dWx, dWh, db, dP); dc0 is None for a cell without a cell
// state, dP for one without per-unit parameters.
inline py::tuple seq_backward(const py::object& xs, const py::object& h0, const py::object& c0,
                              const py::object& Wx, const py::object& Wh, const py::object& b,
                              const py::object& hs, const py::object& gates, const py::object& cs,
                              const py::object& dhs, const py::object& dhT, const py::object& dcT,
                              const std::string& cell, const py::object& P,
                              const py::object& lengths, bool reverse, const std::string& precision) {
  const Dims d = check_backward(cell_facts(cell), xs, h0, c0, Wx, Wh, b, hs, gates, cs, dhs, dhT,
                                dcT, P, "", lengths, precision);
  return with_cell(cell, [&](auto c) {
    using Cell = decltype(c);
    if (d.itemsize == 4) return backward_impl<Cell, float>(d, xs, h0, c0, Wx, Wh, hs, gates, cs, dhs, dhT, dcT, P, reverse);
    return backward_impl<Cell, double>(d, xs, h0, c0, Wx, Wh, hs, gates, cs, dhs, dhT, dcT, P, reverse);
  });
}

// backward_check(...) -> (N, T, D, H, itemsize): the rules of a backward call, without running it.
inline py::tuple backward_check(const py::object& xs, const py::object& h0, const py::object& c0,
                                const py::object& Wx, const py::object& Wh, const py::object& b,
                                const py::object& hs, const py::object& gates, const py::object& cs,
                                const py::object& dhs, const py::object& dhT, const py::object& dcT,
                                const std::string& cell, const std::string& prefix,
                                const py::object& P, const py::object& lengths, const std::string& precision) {
  const Dims d = check_backward(cell_facts(cell), xs, h0, c0, Wx, Wh, b, hs, gates, cs, dhs, dhT,
                                dcT, P, prefix, lengths, precision);
  return py::make_tuple(d.s.N, d.s.T, d.s.D, d.s.H, d.itemsize);
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

// Checks a list of arrays (gradients; `what` names it in errors): a list/tuple of writable
// (when written) C-contiguous arrays of one float dtype. Returns the itemsize (0 for an empty
// list) and fills `arrays` with the arrays (references held).
inline int check_grad_list(const py::object& grads, bool writable, std::vector<py::array>& arrays,
                           const std::string& what = "grads") {
  if (!py::isinstance<py::list>(grads) && !py::isinstance<py::tuple>(grads)) {
    throw py::type_error(what + " must be a list or tuple of numpy arrays, got " +
                         py::str(py::type::of(grads).attr("__name__")).cast<std::string>());
  }
  int is = 0;
  std::string first_dtype;
  py::ssize_t k = 0;
  arrays.clear();
  for (const py::handle& h : py::tuple(grads)) {  // one snapshot of the list's items
    const std::string name = what + "[" + std::to_string(k) + "]";
    py::array a = as_array(h, name.c_str());
    const int this_is = float_itemsize(a, name.c_str());
    if (is == 0) {
      is = this_is;
      first_dtype = dtype_str(a);
    } else if (this_is != is) {
      throw py::type_error(name + " has dtype " + dtype_str(a) + " but " + what + "[0] has " +
                           first_dtype + ": all arrays in " + what + " must share one dtype");
    }
    if (!(a.flags() & py::array::c_style)) {
      throw py::value_error(name + " must be C-contiguous, got strides " +
                            py::str(a.attr("strides")).cast<std::string>());
    }
    if (writable && !a.writeable()) {
      throw py::value_error(name + " must be writable (it is written in place), got a "
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
