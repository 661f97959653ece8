// Every cell the drivers are built for, in one list: a new cell is its header and one line here
// (ARCHITECTURE.md, "Adding a cell"). The drivers instantiate themselves for each entry
// (PYLSTM_FOR_EACH_CELL), and the bindings turn the cell's name into its type (with_cell).
#pragma once

#include <stdexcept>
#include <string>

#include "cells/lstm.h"
#include "cells/rnn.h"

// X(type, name as the Python API spells it)
#define PYLSTM_FOR_EACH_CELL(X) \
  X(LstmCell, "lstm")           \
  X(RnnTanhCell, "rnn_tanh")    \
  X(RnnReluCell, "rnn_relu")

namespace pylstm {

// The valid names, for error messages: 'lstm', 'rnn_tanh', 'rnn_relu'.
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
