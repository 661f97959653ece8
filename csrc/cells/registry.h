// Every cell the drivers are built for, in one list: a new cell is its header and one line here
// (ARCHITECTURE.md, "Adding a cell"). The drivers instantiate themselves for each entry
// (PYLSTM_FOR_EACH_CELL), and the bindings turn the cell's name into its type (with_cell).
#pragma once

#include <stdexcept>
#include <string>

#include "cells/lstm.h"
#include "cells/peephole.h"
#include "cells/rnn.h"

// X(type, name as the Python API spells it)
#define PYLSTM_FOR_EACH_CELL(X) \
  X(LstmCell, "lstm")           \
  X(PeepholeCell, "peephole")   \
  X(RnnTanhCell, "rnn_tanh")    \
  X(RnnReluCell, "rnn_relu")

namespace pylstm {

// The valid names, for error messages: 'lstm', 'peephole', 'rnn_tanh', 'rnn_relu'.
inline std::string cell_names() {
  std::string out;
#define PYLSTM_CELL_NAME(type, name) out += std::string(out.empty() ? "'" : ", '") + name + "'";
  PYLSTM_FOR_EACH_CELL(PYLSTM_CELL_NAME)
#undef PYLSTM_CELL_NAME
  return out;
}

// Calls f(Cell{}) for the cell named `name`; std::invalid_argument for an unknown name.
template <class F>
decltype(auto) with_cell(const std::string& name, F&& f) {
#define PYLSTM_CELL_CASE(type, cname) \
  if (name == cname) return f(type{});
  PYLSTM_FOR_EACH_CELL(PYLSTM_CELL_CASE)
#undef PYLSTM_CELL_CASE
  throw std::invalid_argument("cell must be one of " + cell_names() + ", got '" + name + "'");
}

}  // namespace pylstm

namespace pylstm {

// A cell's pointwise math called the same way for every cell: the per-unit parameters p are
// passed only to a cell that has some (kUnitParams > 0); param_grads is theirs alone.
template <class Cell>
struct CellCall {
  static constexpr int kP = Cell::kUnitParams > 0 ? Cell::kUnitParams : 1;
  template <class T>
  PYLSTM_HD static void forward(const T (&pre)[Cell::kGates], T c_prev, const T (&p)[kP],
                                T (&act)[Cell::kGates], T& c, T& h) {
    if constexpr (Cell::kUnitParams > 0) Cell::forward(pre, c_prev, p, act, c, h);
    else Cell::forward(pre, c_prev, act, c, h);
  }
  template <class T>
  PYLSTM_HD static void backward(const T (&act)[Cell::kGates], T c, T c_prev, const T (&p)[kP],
                                 T dh, T dc, T (&da)[Cell::kGates], T& dc_prev) {
    if constexpr (Cell::kUnitParams > 0) Cell::backward(act, c, c_prev, p, dh, dc, da, dc_prev);
    else Cell::backward(act, c, c_prev, dh, dc, da, dc_prev);
  }
};

}  // namespace pylstm
