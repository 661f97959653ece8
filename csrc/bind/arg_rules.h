// The argument rules of every recurrent-layer entry point and their error messages, in one
// place for both bindings: the CPU module describes its NumPy arrays and the CUDA module its
// __cuda_array_interface__ objects as ArgViews, and both check them here (the Python layer
// reaches the same checks through the CPU module's forward_check / backward_check, so the
// reference backend refuses exactly what the kernels refuse). Every error is a TypeError or
// ValueError whose message starts with the argument's name.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <climits>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "cells/registry.h"
#include "common/seq_args.h"

namespace pylstm {
namespace bind {

namespace py = pybind11;

// One argument as the rules see it, whatever kind of array it is.
struct ArgView {
  std::string name;           // as messages name it ("xs", "cache.hs", ...)
  bool present = false;       // false for None
  char kind = 0;              // NumPy's dtype kind: 'f', 'i', ...
  int itemsize = 0;
  bool native_order = true;   // byte order of this machine (or not applicable)
  std::string dtype;          // "float32", ">f4", ... for messages
  std::vector<int64_t> shape;
  bool c_contiguous = true;
  std::string strides;        // for messages
  bool writable = true;
};

inline std::string shape_str(const std::vector<int64_t>& s) {
  std::ostringstream os;
  os << "(";
  for (size_t k = 0; k < s.size(); ++k) os << (k ? ", " : "") << s[k];
  os << (s.size() == 1 ? ",)" : ")");
  return os.str();
}

inline bool is_float(const ArgView& a, int itemsize) {
  return a.kind == 'f' && a.itemsize == itemsize && a.native_order;
}

// 4 or 8, or TypeError naming the argument.
inline int float_itemsize(const ArgView& a) {
  if (is_float(a, 4)) return 4;
  if (is_float(a, 8)) return 8;
  throw py::type_error(a.name + " must have dtype float32 or float64, got " + a.dtype);
}

// dtype (the reference dtype's itemsize, named after dtype_owner), rank, each extent (-1 =
// any), C-contiguity, and writability when the kernel writes into it.
inline void check_view(const ArgView& a, int itemsize, const std::vector<int64_t>& shape,
                       bool writable, const std::string& dtype_owner) {
  if (!is_float(a, itemsize)) {
    throw py::type_error(a.name + " must have dtype " + (itemsize == 4 ? "float32" : "float64") +
                         " (the dtype of " + dtype_owner + "), got " + a.dtype);
  }
  if (a.shape.size() != shape.size()) {
    throw py::value_error(a.name + " must have rank " + std::to_string(shape.size()) +
                          ", got rank " + std::to_string(a.shape.size()) + " with shape " +
                          shape_str(a.shape));
  }
  for (size_t k = 0; k < shape.size(); ++k) {
    if (shape[k] >= 0 && a.shape[k] != shape[k]) {
      throw py::value_error(a.name + " must have shape " + shape_str(shape) + ", got " +
                            shape_str(a.shape));
    }
  }
  if (!a.c_contiguous) {
    throw py::value_error(a.name + " must be C-contiguous (use numpy.ascontiguousarray), got strides " +
                          a.strides);
  }
  if (writable && !a.writable) {
    throw py::value_error(a.name + " must be writable, got a read-only array");
  }
}

// What the rules need to know of a cell: its gate blocks, whether it has a cell state, its rows
// of per-unit parameters (P), and its saved activations per unit (the gates array's blocks).
struct CellFacts {
  std::string name;
  int64_t gates;
  bool has_c;
  int64_t unit_params;
  int64_t saved;
  std::string param_name;  // what the API calls P for this cell ("P", "b_hn")
};

// ValueError listing the valid names for an unknown cell.
inline CellFacts cell_facts(const std::string& cell) {
  return with_cell(cell, [&](auto c) {
    using Cell = decltype(c);
    std::string pname = "P";
    if constexpr (Cell::kUnitParams > 0) pname = Cell::kParamName;
    return CellFacts{cell, Cell::kGates, Cell::kHasCellState, Cell::kUnitParams, CellCall<Cell>::kS,
                     pname};
  });
}

// A cell-state argument given to a cell without one.
inline void check_no_cell_state(const ArgView& a, const CellFacts& c) {
  if (a.present) {
    throw py::value_error(a.name + " must be None: the " + c.name + " cell has no cell state");
  }
}

// What a backend's sizes must fit in 32 bits. The CPU driver and its BLAS index some products
// of sizes (a step's rows across all N*T rows) as int: every such product is bounded. The CUDA
// kernels index in 64 bits; only what cuBLAS takes as int (m, n, k, leading dimensions) is.
enum class IndexRule { kCpuElements, kCublasArgs };

// The inputs of a forward call: xs (N, T, D), Wx (D, G*H), Wh (H, G*H), b (G*H,), h0 / c0
// (N, H) or absent, P (K, H) for a cell with K rows of per-unit parameters ((H,) when K = 1;
// named as the cell names it: the P of a view named "<prefix>P" is renamed), else absent.
// Returns the shape; *itemsize gets the dtype's.
inline SeqShape check_seq_inputs(const CellFacts& c, const ArgView& xs, const ArgView& Wx,
                                 const ArgView& Wh, const ArgView& b, const ArgView& h0,
                                 const ArgView& c0, const ArgView& P_in, int* itemsize,
                                 IndexRule rule = IndexRule::kCpuElements) {
  ArgView P = P_in;
  if (!P.name.empty() && P.name.back() == 'P') P.name = P.name.substr(0, P.name.size() - 1) + c.param_name;
  const int64_t kG = c.gates;
  const std::string gh = kG == 1 ? "H" : std::to_string(kG) + "H";
  const int is = float_itemsize(xs);
  if (xs.shape.size() != 3) {
    throw py::value_error(xs.name + " must have rank 3 (N, T, D), got rank " +
                          std::to_string(xs.shape.size()) + " with shape " + shape_str(xs.shape));
  }
  if (Wh.shape.size() != 2) {
    throw py::value_error(Wh.name + " must have rank 2 (H, " + gh + "), got rank " +
                          std::to_string(Wh.shape.size()) + " with shape " + shape_str(Wh.shape));
  }
  const SeqShape s{xs.shape[0], xs.shape[1], xs.shape[2], Wh.shape[0]};
  const char* what[4] = {"N (batch size)", "T (time steps)", "D (input size)", "H (hidden size)"};
  const int64_t val[4] = {s.N, s.T, s.D, s.H};
  for (int k = 0; k < 4; ++k) {
    if (val[k] < 1) {
      const ArgView& owner = k < 3 ? xs : Wh;
      throw py::value_error(owner.name + ": " + what[k] + " must be >= 1, got shape " +
                            shape_str(owner.shape));
    }
  }
  const int64_t N = s.N, T = s.T, D = s.D, H = s.H;
  check_view(xs, is, {N, T, D}, false, xs.name);
  check_view(Wh, is, {H, kG * H}, false, xs.name);
  check_view(Wx, is, {D, kG * H}, false, xs.name);
  check_view(b, is, {kG * H}, false, xs.name);
  if (h0.present) check_view(h0, is, {N, H}, false, xs.name);
  if (!c.has_c) check_no_cell_state(c0, c);
  if (c0.present) check_view(c0, is, {N, H}, false, xs.name);
  const std::vector<int64_t> pshape =
      c.unit_params == 1 ? std::vector<int64_t>{H} : std::vector<int64_t>{c.unit_params, H};
  if (c.unit_params > 0 && !P.present) {
    throw py::value_error(P.name + " must be an array of shape " +
                          (c.unit_params == 1 ? std::string("(H,)")
                                              : "(" + std::to_string(c.unit_params) + ", H)") +
                          " (the " + c.name + " cell's per-unit parameters), got None");
  }
  if (c.unit_params == 0 && P.present) {
    throw py::value_error(P.name + " must be None: the " + c.name +
                          " cell has no per-unit parameters");
  }
  if (P.present) check_view(P, is, pshape, false, xs.name);
  // (rows of the saved activations and dA are S*H wide, S >= G: those are the leading
  // dimensions the drivers pass; a step's rows of them are T*S*H apart)
  const int64_t GS = c.saved * H;
  if (rule == IndexRule::kCpuElements) {
    const int64_t biggest = N * T * std::max(GS, D + H);
    if (biggest > INT_MAX || T * GS > INT_MAX) {
      throw py::value_error(xs.name + ": N*T*max(" + gh + ", D+H) = " + std::to_string(biggest) +
                            " is too large for 32-bit BLAS indexing");
    }
  } else {
    // cuBLAS's m, n, k and leading dimensions: N*T rows (the input projection, dX), T*S*H
    // (a step's rows), D+H (dW's rows) and S*H (a row of the saved activations)
    const std::string sh = c.saved == 1 ? "H" : std::to_string(c.saved) + "H";
    const std::pair<int64_t, std::string> args[] = {
        {N * T, "N*T"}, {T * GS, "T*" + sh}, {D + H, "D+H"}, {GS, sh}};
    for (const auto& a : args) {
      if (a.first > INT_MAX) {
        throw py::value_error(xs.name + ": " + a.second + " = " + std::to_string(a.first) +
                              " is too large for cuBLAS's 32-bit sizes and leading dimensions");
      }
    }
  }
  *itemsize = is;
  return s;
}

// What a backward call reads besides the inputs: the forward's hs (N, T, H), gates (N, T, S*H)
// and cs (N, T, H; absent without a cell state), the upstream dhs (N, T, H) and the optional
// dhT, dcT (N, H).
inline void check_seq_saved(const CellFacts& c, const SeqShape& s, int is, const std::string& owner,
                            const ArgView& hs, const ArgView& gates, const ArgView& cs,
                            const ArgView& dhs, const ArgView& dhT, const ArgView& dcT) {
  const int64_t N = s.N, T = s.T, H = s.H;
  check_view(hs, is, {N, T, H}, false, owner);
  check_view(gates, is, {N, T, c.saved * H}, false, owner);
  if (c.has_c) {
    check_view(cs, is, {N, T, H}, false, owner);
  } else {
    check_no_cell_state(cs, c);
    check_no_cell_state(dcT, c);
  }
  check_view(dhs, is, {N, T, H}, false, owner);
  if (dhT.present) check_view(dhT, is, {N, H}, false, owner);
  if (dcT.present) check_view(dcT, is, {N, H}, false, owner);
}

// precision: "fp32" (false) or "bf16" (true: the GEMMs' operands rounded to bfloat16, which
// applies to float32 arrays only).
inline bool read_precision(const std::string& precision, int itemsize, const std::string& dtype_owner) {
  if (precision != "fp32" && precision != "bf16") {
    throw py::value_error("precision must be one of 'fp32', 'bf16', got '" + precision + "'");
  }
  if (precision == "bf16" && itemsize != 4) {
    throw py::value_error("precision: 'bf16' applies to float32 arrays, but " + dtype_owner +
                          " is float64 (use precision='fp32', or float32 arrays)");
  }
  return precision == "bf16";
}

// lengths: None, or (N,) int64 on the host (a NumPy array), C-contiguous, each in [1, T]. Returns
// a copy of the values (empty for None): the drivers index hs and xs with them, so they are
// taken once, here, and the array cannot change them afterwards.
inline std::vector<int64_t> read_lengths(const py::object& o, const SeqShape& s, const std::string& name) {
  if (o.is_none()) return {};
  if (!py::isinstance<py::array>(o)) {
    throw py::type_error(name + " must be a numpy.ndarray of int64 on the host, got " +
                         py::str(py::type::of(o).attr("__name__")).cast<std::string>());
  }
  const py::array a = py::reinterpret_borrow<py::array>(o);
  const py::dtype dt = a.dtype();
  if (!(dt.kind() == 'i' && dt.itemsize() == 8 && dt.byteorder() != '>')) {
    throw py::type_error(name + " must have dtype int64, got " + py::str(dt).cast<std::string>());
  }
  if (a.ndim() != 1 || a.shape(0) != s.N) {
    throw py::value_error(name + " must have shape (" + std::to_string(s.N) +
                          ",) (one length per sequence), got " +
                          shape_str(std::vector<int64_t>(a.shape(), a.shape() + a.ndim())));
  }
  if (!(a.flags() & py::array::c_style)) throw py::value_error(name + " must be C-contiguous");
  const int64_t* v = static_cast<const int64_t*>(a.data());
  std::vector<int64_t> out(v, v + s.N);
  for (int64_t n = 0; n < s.N; ++n) {
    if (out[n] < 1 || out[n] > s.T) {
      throw py::value_error(name + "[" + std::to_string(n) + "] = " + std::to_string(out[n]) +
                            ": every length must be in [1, T] = [1, " + std::to_string(s.T) + "]");
    }
  }
  return out;
}

}  // namespace bind
}  // namespace pylstm
