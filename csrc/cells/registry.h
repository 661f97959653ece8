// Every cell the drivers are built for, in one list: a new cell is its header and one line here
// (ARCHITECTURE.md, "Adding a cell"). The drivers instantiate themselves for each entry
// (PYLSTM_FOR_EACH_CELL), and the bindings turn the cell's name into its type (with_cell).
#pragma once

#include <stdexcept>
#include <string>

#include <type_traits>

#include "cells/gru.h"
#include "cells/lstm.h"
#include "cells/peephole.h"
#include "cells/rnn.h"
#include "cells/torch_order.h"

// X(type, name as the Python API spells it)
#define PYLSTM_FOR_EACH_CELL(X) \
  X(LstmCell, "lstm")           \
  X(PeepholeCell, "peephole")   \
  X(GruCell, "gru")             \
  X(GruBeforeKerasCell, "gru_reset_before") \
  X(GruBookCell, "gru_book")    \
  X(RnnTanhCell, "rnn_tanh")    \
  X(RnnReluCell, "rnn_relu")    \
  X(LstmTorchCell, "lstm_torch") \
  X(GruTorchCell, "gru_torch")

namespace pylstm {

// The valid names, for error messages: 'lstm', 'peephole', 'gru', 'gru_reset_before', 'gru_book',
// 'rnn_tanh', 'rnn_relu', 'lstm_torch', 'gru_torch'.
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

// The optional members of a cell (cells/gru.h has them all), with their defaults: split gate
// blocks (0), saved activations per unit (kGates + kSplit), a direct dh path (false).
template <class C, class = void>
struct split_of : std::integral_constant<int, 0> {};
template <class C>
struct split_of<C, std::void_t<decltype(C::kSplit)>> : std::integral_constant<int, C::kSplit> {};
template <class C, class = void>
struct gated_of : std::integral_constant<int, 0> {};
template <class C>
struct gated_of<C, std::void_t<decltype(C::kGated)>> : std::integral_constant<int, C::kGated> {};
template <class C, class = void>
struct direct_h_of : std::false_type {};
template <class C>
struct direct_h_of<C, std::void_t<decltype(C::kDirectH)>> : std::bool_constant<C::kDirectH> {};

// A cell's pointwise math called the same way for every cell, with every argument any cell
// takes; each cell gets the ones it declares: per-unit parameters p (kUnitParams > 0), the
// split blocks' recurrent parts and h_prev (kSplit > 0), a direct dh (kDirectH). param_grads
// is called only for a cell with unit parameters.
template <class Cell>
struct CellCall {
  static constexpr int kG = Cell::kGates;
  static constexpr int kSplit = split_of<Cell>::value;
  static constexpr int kS = kG + kSplit;  // saved activations = dA blocks per unit
  static constexpr bool kDirectH = direct_h_of<Cell>::value;
  // The last kGated blocks take (gate * h_prev) @ Wh in a second phase of each step
  // (cells/gru.h, GruBeforeCell); such a cell is driven through its phase functions, not these.
  static constexpr int kGated = gated_of<Cell>::value;
  static constexpr int kP = Cell::kUnitParams > 0 ? Cell::kUnitParams : 1;
  static constexpr int kSp = kSplit > 0 ? kSplit : 1;

  template <class T>
  PYLSTM_HD static void forward(const T (&pre)[kG], const T (&hsplit)[kSp], T h_prev, T c_prev,
                                const T (&p)[kP], T (&act)[kS], T& c, T& h) {
    if constexpr (kGated > 0) {
      (void)pre, (void)hsplit, (void)h_prev, (void)act;
      c = h = T(0);  // (never called: the drivers run a gated cell's phases themselves)
    } else if constexpr (kSplit > 0) {
      Cell::forward(pre, hsplit, h_prev, p, act, h);
      c = T(0);
    } else if constexpr (Cell::kUnitParams > 0) {
      Cell::forward(pre, c_prev, p, act, c, h);
    } else {
      Cell::forward(pre, c_prev, act, c, h);
    }
  }
  template <class T>
  PYLSTM_HD static void backward(const T (&act)[kS], T c, T c_prev, T h_prev, const T (&p)[kP],
                                 T dh, T dc, T (&da)[kS], T& dc_prev, T& dh_direct) {
    dh_direct = T(0);
    dc_prev = T(0);
    if constexpr (kGated > 0) {
      (void)act, (void)h_prev, (void)dh, (void)da;
    } else if constexpr (kSplit > 0) {
      Cell::backward(act, h_prev, dh, da, dh_direct);
    } else if constexpr (Cell::kUnitParams > 0) {
      Cell::backward(act, c, c_prev, p, dh, dc, da, dc_prev);
    } else {
      Cell::backward(act, c, c_prev, dh, dc, da, dc_prev);
    }
  }
};

}  // namespace pylstm
