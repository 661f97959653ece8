// pybind11 module pylstm._cuda (built with nvcc and cuBLAS, PYLSTM_REAL_CUDA) and, from the same
// source, pylstm._cuda_emu (the emulation runtime of cuda/emu.cpp: host memory stands for the
// device, so CI runs these bindings and the CUDA kernels without a GPU).
//
// Arrays are any objects with __cuda_array_interface__ (CuPy, PyTorch CUDA tensors, Numba device
// arrays). The kernels allocate nothing: the caller passes outputs and scratch (pylstm's Python
// layer allocates them with the inputs' array library) and the stream, as an integer handle.
// Every argument is checked before anything runs: type (a device array; host arrays are named as
// such), dtype, rank, shape, C-contiguity, writability of outputs, one device for all, and no
// output overlapping another argument. Errors: TypeError / ValueError naming the argument;
// RuntimeError for a failed CUDA or cuBLAS call (never left pending for the next call).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <functional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/runtime.h"
#include "bind/arg_rules.h"
#include "cells/registry.h"
#include "cuda/api.h"

#if defined(PYLSTM_REAL_CUDA)
#define PYLSTM_CUDA_MODULE _cuda
#else
#define PYLSTM_CUDA_MODULE _cuda_emu
#endif

namespace py = pybind11;

namespace pylstm {
namespace {

// One argument's __cuda_array_interface__, read and kept with its name.
struct DevArray {
  std::string name;
  std::uintptr_t ptr = 0;
  std::vector<int64_t> shape;
  std::string typestr;
  int64_t size = 1;
  int itemsize = 0;
  bool readonly = false;
  bool c_contiguous = true;
  std::string strides;
  int device = -1;
  // The interface's `stream` (version 3): work on it must be waited for; -1 when absent/None.
  int64_t stream = -1;
  bool given = false;  // false for None (name is kept for messages about it)
  bool present() const { return given; }
  std::uintptr_t end() const { return ptr + std::uintptr_t(size) * std::uintptr_t(itemsize); }
};

std::string type_name(const py::handle& o) {
  const py::handle t = py::type::of(o);
  std::string mod = py::hasattr(t, "__module__") ? py::str(t.attr("__module__")).cast<std::string>() : "";
  const std::string qn = py::str(t.attr("__qualname__")).cast<std::string>();
  return mod.empty() || mod == "builtins" ? qn : mod + "." + qn;
}

using bind::shape_str;

// "<f4" -> "float32", "<i8" -> "int64", ... (NumPy's names, for messages).
std::string dtype_name(const std::string& ts) {
  if (ts.size() < 3) return ts;
  const int bits = 8 * std::atoi(ts.c_str() + 2);
  switch (ts[1]) {
    case 'f': return "float" + std::to_string(bits);
    case 'i': return "int" + std::to_string(bits);
    case 'u': return "uint" + std::to_string(bits);
    case 'c': return "complex" + std::to_string(bits);
    case 'b': return "bool";
    default: return ts;
  }
}

DevArray parse(const py::handle& obj, const char* name) {
  if (!py::hasattr(obj, "__cuda_array_interface__")) {
    if (py::isinstance<py::array>(obj)) {
      throw py::type_error(std::string(name) +
                           " is a host array (numpy.ndarray); the CUDA backend takes device arrays "
                           "(CuPy, PyTorch CUDA tensors, Numba): move it to the GPU first, e.g. "
                           "cupy.asarray(" + name + "), or use backend='cpu'");
    }
    throw py::type_error(std::string(name) +
                         " must be a device array exposing __cuda_array_interface__, got " +
                         type_name(obj));
  }
  const py::object cai = obj.attr("__cuda_array_interface__");
  if (!py::isinstance<py::dict>(cai)) {
    throw py::type_error(std::string(name) + ".__cuda_array_interface__ must be a dict");
  }
  const py::dict d = py::reinterpret_borrow<py::dict>(cai);
  DevArray a;
  a.name = name;
  a.given = true;
  try {
    for (const py::handle& e : d["shape"]) a.shape.push_back(e.cast<int64_t>());
    a.typestr = d["typestr"].cast<std::string>();
    const py::tuple data = d["data"].cast<py::tuple>();
    a.ptr = data[0].cast<std::uintptr_t>();
    a.readonly = data[1].cast<bool>();
  } catch (const py::error_already_set&) {
    throw py::type_error(std::string(name) + ": malformed __cuda_array_interface__");
  } catch (const py::cast_error&) {
    throw py::type_error(std::string(name) + ": malformed __cuda_array_interface__");
  }
  if (d.contains("stream") && !d["stream"].is_none()) {
    try {
      a.stream = d["stream"].cast<int64_t>();
    } catch (const py::cast_error&) {
      throw py::type_error(std::string(name) +
                           ": __cuda_array_interface__['stream'] must be an integer or None");
    }
    if (a.stream <= 0) {
      throw py::value_error(std::string(name) + ": __cuda_array_interface__['stream'] is " +
                            std::to_string(a.stream) +
                            "; the interface disallows 0 (ambiguous): 1 is the legacy default "
                            "stream, 2 the per-thread default stream, other values a cudaStream_t");
    }
  }
  if (d.contains("mask") && !d["mask"].is_none()) {
    throw py::value_error(std::string(name) + ": masked device arrays are not supported");
  }
  a.itemsize = a.typestr.size() >= 3 ? std::atoi(a.typestr.c_str() + 2) : 0;
  for (int64_t e : a.shape) a.size *= e;
  if (d.contains("strides") && !d["strides"].is_none()) {
    std::vector<int64_t> st;
    for (const py::handle& e : d["strides"]) st.push_back(e.cast<int64_t>());
    a.strides = shape_str(st);
    int64_t want = a.itemsize;
    for (size_t k = st.size(); k-- > 0;) {
      if (a.shape[k] != 1 && st[k] != want) a.c_contiguous = false;
      want *= a.shape[k];
    }
    if (a.size == 0) a.c_contiguous = true;
  }
  return a;
}

// The distinct producer streams of the given arrays (absent arrays and those without a stream
// contribute none), for gpu::wait_for_producers.
std::vector<std::uintptr_t> producer_streams(const std::vector<const DevArray*>& arrays) {
  std::vector<std::uintptr_t> out;
  for (const DevArray* a : arrays) {
    if (!a->present() || a->stream < 0) continue;
    const auto s = std::uintptr_t(a->stream);
    if (std::find(out.begin(), out.end(), s) == out.end()) out.push_back(s);
  }
  return out;
}

bool is_legacy(std::uintptr_t s) { return s == 0 || s == 1; }

// Before waiting on the arrays' producer streams: a producer that is capturing a CUDA graph
// while pylstm's stream is not would pull pylstm's kernels into that foreign graph (the event
// wait joins the capture), and the legacy default stream cannot be used at all while another
// blocking stream of the device captures: both are clear errors here rather than a broken
// capture or a bare CUDA error later. When pylstm's own stream is capturing, the caller's graph
// orders its streams and the waits are skipped (gpu::wait_for_producers), producers unchecked.
void wait_for_inputs(const std::vector<const DevArray*>& arrays,
                     const std::vector<std::uintptr_t>& producers, std::uintptr_t consumer) {
  static const char* legacy =
      "the legacy default stream cannot be used while a blocking stream of the device captures a "
      "CUDA graph (it would invalidate that capture): call pylstm on a non-legacy stream, or "
      "capture on a cudaStreamNonBlocking stream";
  const gpu::Capture mine = gpu::capture_state(consumer);
  if (mine == gpu::Capture::kLegacyBlocked) throw std::runtime_error(std::string("stream: ") + legacy);
  if (mine == gpu::Capture::kActive) {  // the caller's graph orders its streams: no waits
    gpu::wait_for_producers(producers, consumer);
    return;
  }
  for (const DevArray* a : arrays) {
    if (!a->present() || a->stream < 0) continue;
    const auto s = std::uintptr_t(a->stream);
    if (s == consumer || (is_legacy(s) && is_legacy(consumer))) continue;
    const gpu::Capture theirs = gpu::capture_state(s);
    if (theirs == gpu::Capture::kLegacyBlocked) throw std::runtime_error(a->name + ": " + legacy);
    if (theirs == gpu::Capture::kActive) {
      throw std::invalid_argument(
          a->name + ": its __cuda_array_interface__ stream is capturing a CUDA graph and pylstm's "
          "stream is not: waiting for it would pull pylstm's kernels into that graph. Call pylstm "
          "on the capturing stream, or end the capture first");
    }
  }
  gpu::wait_for_producers(producers, consumer);
}

// Parses obj, or returns an absent DevArray for None.
DevArray parse_opt(const py::object& obj, const char* name) {
  if (!obj.is_none()) return parse(obj, name);
  DevArray absent{};
  absent.name = name;  // the rules name an absent argument that is required
  return absent;
}

// A device array as the shared rules (arg_rules.h) see it.
bind::ArgView view_of(const DevArray& a) {
  bind::ArgView v;
  v.name = a.name;
  v.present = a.present();
  if (!v.present) return v;
  v.kind = a.typestr.size() >= 3 ? a.typestr[1] : 0;
  v.itemsize = a.itemsize;
  v.native_order = a.typestr.size() >= 3 && (a.typestr[0] == '<' || a.typestr[0] == '=' ||
                                             a.typestr[0] == '|');
  v.dtype = dtype_name(a.typestr);
  v.shape = a.shape;
  v.c_contiguous = a.c_contiguous;
  v.strides = a.strides;
  v.writable = !a.readonly;
  return v;
}

int float_itemsize(const DevArray& a) { return bind::float_itemsize(view_of(a)); }

void check(const DevArray& a, int itemsize, std::vector<int64_t> shape, bool writable = false,
           const char* dtype_owner = "xs") {
  bind::check_view(view_of(a), itemsize, shape, writable, dtype_owner);
}

// One device for every argument (the first one's), and no output overlapping any other
// argument. Returns the device.
int check_devices(const std::vector<const DevArray*>& all, size_t first_output) {
  int dev = -1;
  const DevArray* ref = nullptr;
  for (const DevArray* a : all) {
    if (!a->present() || a->size == 0) continue;
    const int d = gpu::pointer_device(reinterpret_cast<const void*>(a->ptr), a->name.c_str());
    if (ref == nullptr) {
      dev = d;
      ref = a;
    } else if (d != dev) {
      throw py::value_error(std::string(a->name) + " is on device " + std::to_string(d) + " but " +
                            ref->name + " is on device " + std::to_string(dev) +
                            ": all arrays must be on one device");
    }
  }
  for (size_t i = first_output; i < all.size(); ++i) {
    const DevArray* o = all[i];
    if (!o->present() || o->size == 0) continue;
    for (size_t j = 0; j < all.size(); ++j) {
      const DevArray* x = all[j];
      if (j == i || !x->present() || x->size == 0) continue;
      if (o->ptr < x->end() && x->ptr < o->end()) {
        throw py::value_error(std::string(o->name) + " overlaps " + x->name +
                              ": outputs must not share memory with other arguments");
      }
    }
  }
  return dev;
}

template <class T>
T* mut(const DevArray& a) {
  return a.present() ? reinterpret_cast<T*>(a.ptr) : nullptr;
}
template <class T>
const T* in(const DevArray& a) {
  return a.present() ? reinterpret_cast<const T*>(a.ptr) : nullptr;
}

// The inputs of a recurrent-layer call, parsed and checked by the shared rules (arg_rules.h).
struct LstmArgs {
  DevArray xs, Wx, Wh, b, h0, c0, P;
  SeqShape s{};
  int itemsize = 0;
  bind::CellFacts cell;
  // The walk (common/seq_args.h): the host's lengths (empty for all T), their device copy
  // (lengths_dev, which the kernels read), the direction.
  std::vector<int64_t> lengths;
  DevArray lengths_dev;
  bool reverse = false;
  bool bf16 = false;  // precision="bf16": the GEMMs' operands in bfloat16 (float32 arrays)
};

// lengths (host, checked by the shared rule) and lengths_dev: both or neither; lengths_dev an
// int64 (N,) device array holding the same values (the Python layer uploads them; the kernels
// clamp what they read to [1, T] whatever it holds).
void read_walk(LstmArgs& a, const py::object& lengths, const py::object& lengths_dev, bool reverse) {
  a.lengths = bind::read_lengths(lengths, a.s, "lengths");
  a.lengths_dev = parse_opt(lengths_dev, "lengths_dev");
  a.reverse = reverse;
  if (a.lengths.empty() != !a.lengths_dev.present()) {
    throw py::value_error("lengths and lengths_dev must both be given (a host array and its device copy) or both be None");
  }
  if (a.lengths_dev.present()) {
    const DevArray& d = a.lengths_dev;
    if (d.typestr.size() < 2 || d.typestr.substr(1) != "i8" || d.typestr[0] == '>') {
      throw py::type_error("lengths_dev must have dtype int64, got " + dtype_name(d.typestr));
    }
    if (d.shape != std::vector<int64_t>{a.s.N} || !d.c_contiguous) {
      throw py::value_error("lengths_dev must be a C-contiguous array of shape (" + std::to_string(a.s.N) + ",)");
    }
  }
}

LstmArgs read_inputs(const py::object& xs, const py::object& Wx, const py::object& Wh,
                     const py::object& b, const py::object& h0, const py::object& c0,
                     const std::string& cell, const py::object& P) {
  LstmArgs a;
  a.cell = bind::cell_facts(cell);
  a.xs = parse(xs, "xs");
  a.Wh = parse(Wh, "Wh");
  float_itemsize(a.xs);
  a.Wx = parse(Wx, "Wx");
  a.b = parse(b, "b");
  a.h0 = parse_opt(h0, "h0");
  a.c0 = parse_opt(c0, "c0");
  a.P = parse_opt(P, "P");
  a.s = bind::check_seq_inputs(a.cell, view_of(a.xs), view_of(a.Wx), view_of(a.Wh), view_of(a.b),
                               view_of(a.h0), view_of(a.c0), view_of(a.P), &a.itemsize,
                               bind::IndexRule::kCublasArgs);
  return a;
}

void check_work(const DevArray& w, int itemsize, int64_t need) {
  check(w, itemsize, {-1}, true);
  if (w.size < need) {
    throw py::value_error(std::string(w.name) + " must have at least " + std::to_string(need) +
                          " elements (the workspace size), got " + std::to_string(w.size));
  }
}

// Elements (of 4 bytes or more) that hold cuBLAS's workspace on `device` after the kernels'
// part, with room to align it to 256 bytes; 0 for device -1.
int64_t blas_workspace_elements(int device) {
  return device < 0 ? 0 : (gpu::cublas_workspace_bytes(device) + 256 + 3) / 4;
}

// The kernels' workspace; a bfloat16 call's adds the converted operands' scratch (cuda/api.h).
int64_t forward_workspace(const std::string& cell, const SeqShape& s, bool save, bool bf16) {
  return with_cell(cell, [&](auto c) {
    using Cell = decltype(c);
    return seq_forward_workspace_size<Cell>(s, save) + (bf16 ? seq_bf16_workspace_size<Cell>(s) : 0);
  });
}
int64_t backward_workspace(const std::string& cell, const SeqShape& s, bool bf16) {
  return with_cell(cell, [&](auto c) {
    using Cell = decltype(c);
    return seq_backward_workspace_size<Cell>(s) + (bf16 ? seq_bf16_workspace_size<Cell>(s) : 0);
  });
}

// forward_check(xs, Wx, Wh, b, h0, c0, cell, P) -> (N, T, D, H, itemsize, device): the checks
// of forward's inputs, for the caller to allocate outputs.
py::tuple forward_check(const py::object& xs, const py::object& Wx, const py::object& Wh,
                        const py::object& b, const py::object& h0, const py::object& c0,
                        const std::string& cell, const py::object& P) {
  const LstmArgs a = read_inputs(xs, Wx, Wh, b, h0, c0, cell, P);
  const int dev = check_devices({&a.xs, &a.Wx, &a.Wh, &a.b, &a.h0, &a.c0, &a.P}, 7);
  return py::make_tuple(a.s.N, a.s.T, a.s.D, a.s.H, a.itemsize, dev);
}

// What a cached CUDA graph of a call depends on (gpu::run_maybe_graphed): its shape (which call
// and cell, the dtype, the sizes, which optional arrays are present) and its addresses.
std::vector<std::uint64_t> graph_shape(int kind, const LstmArgs& a,
                                       const std::vector<const DevArray*>& arrays) {
  std::vector<std::uint64_t> key = {std::uint64_t(kind), std::uint64_t(a.itemsize),
                                    std::uint64_t(a.s.N), std::uint64_t(a.s.T),
                                    std::uint64_t(a.s.D), std::uint64_t(a.s.H),
                                    std::uint64_t(std::hash<std::string>()(a.cell.name))};
  std::uint64_t present = 0;
  for (size_t i = 0; i < arrays.size(); ++i) present |= std::uint64_t(arrays[i]->present()) << (i % 64);
  key.push_back(present);
  key.push_back(arrays.size());
  // the walk: the lengths decide the steps and each step's rows, which the graph records
  key.push_back(std::uint64_t(a.reverse));
  key.push_back(std::uint64_t(a.bf16));
  key.push_back(a.lengths.size());
  for (int64_t v : a.lengths) key.push_back(std::uint64_t(v));
  return key;
}

std::vector<std::uint64_t> graph_addrs(const std::vector<const DevArray*>& arrays) {
  std::vector<std::uint64_t> addrs;
  for (const DevArray* x : arrays) addrs.push_back(x->present() ? std::uint64_t(x->ptr) : 0u);
  return addrs;
}

// The common end of forward / backward, shapes and dtypes checked: one device and no
// overlapping outputs (all[first_output..] are the outputs), then, without the GIL and on that
// device, `stream` waits for the arrays' producer streams and `body` runs (directly or as a
// cached CUDA graph of kind `kind`).
template <class Body>
void run_on_device(int kind, const LstmArgs& a, const std::vector<const DevArray*>& all,
                   size_t first_output, std::uintptr_t stream, Body&& body, const DevArray& work,
                   int64_t kernel_need) {
  const int dev = check_devices(all, first_output);
  if (a.bf16 && gpu::compute_capability(dev) < 80) {
    const int cc = gpu::compute_capability(dev);
    throw std::runtime_error("precision='bf16' on the GPU needs compute capability 8.0 or newer (bfloat16 "
                             "tensor cores: Ampere and later); device " + std::to_string(dev) + " has " +
                             std::to_string(cc / 10) + "." + std::to_string(cc % 10) +
                             ": use precision='fp32'");
  }
  // cuBLAS's workspace: the part of `work` past what the kernels need, when the caller made it
  // that large (the *_workspace_size functions with `device`): memory from the caller's
  // allocator, ordered on the caller's stream, a plain address inside a graph.
  void* blas_work = nullptr;
  std::size_t blas_bytes = 0;
  if (work.present()) {
    const std::int64_t want = gpu::cublas_workspace_bytes(dev);
    const std::uintptr_t start = (work.ptr + std::uintptr_t(kernel_need * a.itemsize) + 255) & ~std::uintptr_t(255);
    if (want > 0 && start + std::uintptr_t(want) <= work.end()) {
      blas_work = reinterpret_cast<void*>(start);
      blas_bytes = std::size_t(want);
    }
  }
  const std::vector<std::uintptr_t> producers = producer_streams(all);
  std::vector<std::uint64_t> shape = graph_shape(kind, a, all);
  shape.push_back(blas_bytes);  // (a graph captured with cuBLAS's workspace in `work` needs one there)
  const std::vector<std::uint64_t> addrs = graph_addrs(all);
  py::gil_scoped_release nogil;
  gpu::DeviceGuard guard(dev);
  wait_for_inputs(all, producers, stream);
  gpu::run_maybe_graphed(dev, stream, shape, addrs, body, blas_work, blas_bytes);
}

void seq_forward(const py::object& xs, const py::object& Wx, const py::object& Wh,
                 const py::object& b, const py::object& h0, const py::object& c0,
                 const py::object& hs_o, const py::object& hT_o, const py::object& cT_o,
                 const py::object& gates_o, const py::object& cs_o, const py::object& work_o,
                 std::uintptr_t stream, const std::string& cell, const py::object& P,
                 const py::object& lengths, const py::object& lengths_dev, bool reverse,
                 const std::string& precision) {
  LstmArgs a = read_inputs(xs, Wx, Wh, b, h0, c0, cell, P);
  read_walk(a, lengths, lengths_dev, reverse);
  a.bf16 = bind::read_precision(precision, a.itemsize, "xs");
  const int64_t N = a.s.N, T = a.s.T, H = a.s.H;
  const int is = a.itemsize;
  const DevArray hs = parse(hs_o, "hs"), hT = parse(hT_o, "hT");
  const bool has_c = a.cell.has_c;
  const DevArray cT = has_c ? parse(cT_o, "cT") : parse_opt(cT_o, "cT");
  check(hs, is, {N, T, H}, true);
  check(hT, is, {N, H}, true);
  if (has_c) check(cT, is, {N, H}, true);
  else bind::check_no_cell_state(view_of(cT), a.cell);
  const DevArray gates = parse_opt(gates_o, "gates"), cs = parse_opt(cs_o, "cs");
  const bool save = gates.present();
  if (has_c && gates.present() != cs.present()) {
    throw py::value_error("gates and cs must both be given (training) or both be None (inference)");
  }
  if (!has_c) bind::check_no_cell_state(view_of(cs), a.cell);
  if (save) {
    check(gates, is, {N, T, a.cell.saved * H}, true);
    if (has_c) check(cs, is, {N, T, H}, true);
  }
  const int64_t need = forward_workspace(cell, a.s, save, a.bf16);
  const DevArray work = parse_opt(work_o, "work");
  if (need > 0 && !work.present()) {
    throw py::value_error("work must be a device array of at least " + std::to_string(need) +
                          " elements (forward_workspace_size: inference, or bfloat16 GEMMs), got None");
  }
  if (work.present()) check_work(work, is, need);
  const std::vector<const DevArray*> all = {&a.xs, &a.Wx, &a.Wh, &a.b,  &a.h0, &a.c0, &a.P,
                                            &a.lengths_dev, &hs, &hT, &cT, &gates, &cs, &work};
  run_on_device(1, a, all, 8, stream, [&](const GpuContext& ctx) {
    with_cell(cell, [&](auto c) {
      using Cell = decltype(c);
      auto run = [&](auto zero) {
        using T = decltype(zero);
        ForwardArgs<T> f{a.s,        in<T>(a.xs), in<T>(a.h0),    in<T>(a.c0), in<T>(a.Wx),
                         in<T>(a.Wh), in<T>(a.b), mut<T>(hs),     mut<T>(hT),  mut<T>(cT),
                         mut<T>(gates), mut<T>(cs), mut<T>(work)};
        f.P = in<T>(a.P);
        f.lengths = a.lengths.empty() ? nullptr : a.lengths.data();
        f.dev_lengths = reinterpret_cast<const int64_t*>(a.lengths_dev.ptr);
        f.reverse = a.reverse;
        f.bf16 = a.bf16;
        seq_forward_cuda<Cell, T>(ctx, f);
      };
      if (is == 4) run(0.0f);
      else run(0.0);
      return 0;
    });
  }, work, need);
}

void seq_backward(const py::object& xs, const py::object& h0, const py::object& c0,
                  const py::object& Wx, const py::object& Wh, const py::object& b,
                  const py::object& hs_o, const py::object& gates_o, const py::object& cs_o,
                  const py::object& dhs_o, const py::object& dhT_o, const py::object& dcT_o,
                  const py::object& dxs_o, const py::object& dh0_o, const py::object& dc0_o,
                  const py::object& dW_o, const py::object& db_o, const py::object& work_o,
                  std::uintptr_t stream, const std::string& cell, const py::object& P,
                  const py::object& dP_o, const py::object& lengths, const py::object& lengths_dev,
                  bool reverse, const std::string& precision) {
  LstmArgs a = read_inputs(xs, Wx, Wh, b, h0, c0, cell, P);
  read_walk(a, lengths, lengths_dev, reverse);
  a.bf16 = bind::read_precision(precision, a.itemsize, "xs");
  const int64_t N = a.s.N, T = a.s.T, D = a.s.D, H = a.s.H, G = a.cell.gates * H;
  const int is = a.itemsize;
  // The cell-state arguments are required with a cell state and must be None without one.
  auto cstate = [&](const py::object& o, const char* name) {
    return a.cell.has_c ? parse(o, name) : parse_opt(o, name);
  };
  const bool has_p = a.cell.unit_params > 0;
  DevArray v[13] = {parse(hs_o, "hs"),   parse(gates_o, "gates"), cstate(cs_o, "cs"),
                    parse(dhs_o, "dhs"), parse_opt(dhT_o, "dhT"), parse_opt(dcT_o, "dcT"),
                    parse(dxs_o, "dxs"), parse(dh0_o, "dh0"),     cstate(dc0_o, "dc0"),
                    parse(dW_o, "dW"),   parse(db_o, "db"),       parse(work_o, "work"),
                    has_p ? parse(dP_o, "dP") : parse_opt(dP_o, "dP")};
  if (!has_p && v[12].present()) {
    throw py::value_error("dP must be None: the " + a.cell.name + " cell has no per-unit parameters");
  }
  if (has_p) {
    check(v[12], is, a.cell.unit_params == 1 ? std::vector<int64_t>{H}
                                             : std::vector<int64_t>{a.cell.unit_params, H}, true);
  }
  if (!a.cell.has_c) bind::check_no_cell_state(view_of(v[8]), a.cell);
  bind::check_seq_saved(a.cell, a.s, is, "xs", view_of(v[0]), view_of(v[1]), view_of(v[2]),
                        view_of(v[3]), view_of(v[4]), view_of(v[5]));
  check(v[6], is, {N, T, D}, true);
  check(v[7], is, {N, H}, true);
  if (v[8].present()) check(v[8], is, {N, H}, true);
  check(v[9], is, {D + H, G}, true);
  check(v[10], is, {G}, true);
  const int64_t need = backward_workspace(cell, a.s, a.bf16);
  check_work(v[11], is, need);
  std::vector<const DevArray*> all = {&a.xs, &a.Wx, &a.Wh, &a.b, &a.h0, &a.c0, &a.P, &a.lengths_dev};
  for (const DevArray& x : v) all.push_back(&x);
  run_on_device(2, a, all, 14, stream, [&](const GpuContext& ctx) {
    with_cell(cell, [&](auto c) {
      using Cell = decltype(c);
      auto run = [&](auto zero) {
        using T = decltype(zero);
        // v: hs, gates, cs, dhs, dhT, dcT, dxs, dh0, dc0, dW, db, work
        BackwardArgs<T> g{a.s,         in<T>(a.xs),  in<T>(a.h0),  in<T>(a.c0),  in<T>(a.Wx),
                          in<T>(a.Wh), in<T>(v[0]),  in<T>(v[1]),  in<T>(v[2]),  in<T>(v[3]),
                          in<T>(v[4]), in<T>(v[5]),  mut<T>(v[6]), mut<T>(v[7]), mut<T>(v[8]),
                          mut<T>(v[9]), mut<T>(v[10]), mut<T>(v[11])};
        g.P = in<T>(a.P);
        g.dP = mut<T>(v[12]);
        g.lengths = a.lengths.empty() ? nullptr : a.lengths.data();
        g.dev_lengths = reinterpret_cast<const int64_t*>(a.lengths_dev.ptr);
        g.reverse = a.reverse;
        g.bf16 = a.bf16;
        seq_backward_cuda<Cell, T>(ctx, g);
      };
      if (is == 4) run(0.0f);
      else run(0.0);
      return 0;
    });
  }, v[11], need);
}

// --- clipping ---------------------------------------------------------------------------------
std::vector<DevArray> read_grads(const py::object& grads, bool writable) {
  if (!py::isinstance<py::list>(grads) && !py::isinstance<py::tuple>(grads)) {
    throw py::type_error("grads must be a list or tuple of device arrays, got " + type_name(grads));
  }
  std::vector<DevArray> out;
  size_t k = 0;
  for (const py::handle& h : grads) {
    const std::string name = "grads[" + std::to_string(k++) + "]";
    DevArray g = parse(h, name.c_str());
    const int is = float_itemsize(g);
    if (!out.empty() && is != out[0].itemsize) {
      throw py::type_error(name + " has dtype " + dtype_name(g.typestr) +
                           " but grads[0] has " + dtype_name(out[0].typestr) +
                           ": all arrays in grads must share one dtype");
    }
    if (!g.c_contiguous) {
      throw py::value_error(name + " must be C-contiguous, got strides " + g.strides);
    }
    if (writable && g.readonly) {
      throw py::value_error(name +
                            " must be writable (clipping writes it in place), got a read-only array");
    }
    out.push_back(g);
  }
  return out;
}

template <class T>
std::vector<ClipChunk<T>> plan(const std::vector<DevArray>& g, int dev) {
  std::vector<Span<T>> spans;
  for (const DevArray& a : g) spans.push_back({reinterpret_cast<T*>(a.ptr), a.size});
  return plan_clip_chunks(spans, dev < 0 ? 1 : gpu::clip_target_blocks(dev));
}

// clip_plan(grads) -> (doubles of `work` clip_grads needs, device): work holds [norm, rate,
// finite flag, counter, one partial per chunk]; device is -1 for an empty list.
py::tuple clip_plan(const py::object& grads) {
  const std::vector<DevArray> g = read_grads(grads, false);
  if (g.empty()) return py::make_tuple(int64_t(4), -1);
  std::vector<const DevArray*> all;
  for (const DevArray& a : g) all.push_back(&a);
  const int dev = check_devices(all, all.size());
  const size_t chunks = g[0].itemsize == 4 ? plan<float>(g, dev).size() : plan<double>(g, dev).size();
  return py::make_tuple(4 + int64_t(chunks), dev);
}

// _clip_chunk_counts(grads) -> the number of chunks (blocks) each array gets (tests).
std::vector<int64_t> clip_chunk_counts(const py::object& grads) {
  const std::vector<DevArray> g = read_grads(grads, false);
  std::vector<const DevArray*> all;
  for (const DevArray& a : g) all.push_back(&a);
  const int dev = g.empty() ? -1 : check_devices(all, all.size());
  std::vector<int64_t> counts;
  if (g.empty()) return counts;
  const auto chunks = plan<double>(g, dev);  // (the plan depends on element counts only)
  size_t k = 0;  // the chunks come in array order and cover each array exactly
  for (const DevArray& a : g) {
    int64_t n = 0;
    for (int64_t left = a.size; left > 0 && k < chunks.size(); ++k, ++n) left -= chunks[k].size;
    counts.push_back(n);
  }
  return counts;
}

// Measures (max_norm <= 0) or clips in place; results in work[0..3) (see above). work must be
// float64 with work[3] == 0 on the first call (the kernels leave it 0).
void clip_grads(const py::object& grads, double max_norm, const py::object& work_o,
                std::uintptr_t stream) {
  if (!std::isfinite(max_norm)) {
    throw py::value_error("max_norm must be a finite number, got " + std::to_string(max_norm));
  }
  const std::vector<DevArray> g = read_grads(grads, max_norm > 0.0);
  DevArray work = parse(work_o, "work");
  check(work, 8, {-1}, true, "the clipping workspace");
  std::vector<const DevArray*> all = {&work};
  for (const DevArray& a : g) all.push_back(&a);
  const int dev = check_devices(all, 1);
  std::vector<ClipChunk<float>> cf;
  std::vector<ClipChunk<double>> cd;
  const bool f32 = !g.empty() && g[0].itemsize == 4;
  if (f32) cf = plan<float>(g, dev);
  else if (!g.empty()) cd = plan<double>(g, dev);
  const int64_t nchunks = f32 ? int64_t(cf.size()) : int64_t(cd.size());
  if (work.size < 4 + nchunks) {
    throw py::value_error("work must have at least " + std::to_string(4 + nchunks) +
                          " elements (clip_plan(grads)[0]), got " + std::to_string(work.size));
  }
  const std::vector<std::uintptr_t> producers = producer_streams(all);
  double* w = reinterpret_cast<double*>(work.ptr);
  unsigned* counter = reinterpret_cast<unsigned*>(w + 3);
  py::gil_scoped_release nogil;
  gpu::DeviceGuard guard(dev);
  const GpuContext ctx = gpu::context(dev, stream);
  wait_for_inputs(all, producers, stream);
  if (f32) clip_grads_cuda<float>(ctx, cf.data(), nchunks, max_norm, w + 4, counter, w);
  else clip_grads_cuda<double>(ctx, cd.data(), nchunks, max_norm, w + 4, counter, w);
}

// clip_value(grads, limit, stream): every element clamped to [-limit, limit] in place.
void clip_value(const py::object& grads, double limit, std::uintptr_t stream) {
  if (!(limit > 0.0) || !std::isfinite(limit)) {
    throw py::value_error("limit must be a finite number > 0, got " + std::to_string(limit));
  }
  const std::vector<DevArray> g = read_grads(grads, true);
  if (g.empty()) return;
  std::vector<const DevArray*> all;
  for (const DevArray& a : g) all.push_back(&a);
  const int dev = check_devices(all, all.size());
  if (dev < 0) return;  // every array empty
  const std::vector<std::uintptr_t> producers = producer_streams(all);
  const bool f32 = g[0].itemsize == 4;
  std::vector<ClipChunk<float>> cf;
  std::vector<ClipChunk<double>> cd;
  if (f32) cf = plan<float>(g, dev);
  else cd = plan<double>(g, dev);
  py::gil_scoped_release nogil;
  gpu::DeviceGuard guard(dev);
  const GpuContext ctx = gpu::context(dev, stream);
  wait_for_inputs(all, producers, stream);
  if (f32) clip_value_cuda<float>(ctx, cf.data(), int64_t(cf.size()), limit);
  else clip_value_cuda<double>(ctx, cd.data(), int64_t(cd.size()), limit);
}

#if !defined(PYLSTM_REAL_CUDA)
// Self-checks of the emulator itself (tests only): a block tree sum that needs its barriers to
// be real, a barrier some threads skip, and a barrier in a plain launch.
__global__ void emu_block_sum_kernel(const double* in, double* out, bool diverge) {
  __shared__ double red[64];
  red[threadIdx.x] = in[blockIdx.x * blockDim.x + threadIdx.x];
  if (diverge && threadIdx.x == 3) return;  // misses the barriers below
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = red[0];
}

// mode 0: per-block sums of `values` (blocks of 64) with PYLSTM_LAUNCH_SYNC; 1: the same with
// a divergent barrier; 2: the barrier kernel under PYLSTM_LAUNCH. Errors become RuntimeError.
std::vector<double> emu_selftest(const std::vector<double>& values, int mode) {
  const unsigned blocks = unsigned(values.size() / 64);
  std::vector<double> out(blocks, 0.0);
  const double* in = values.data();
  double* res = out.data();
  const bool diverge = mode == 1;
  try {
    if (mode == 2) {
      PYLSTM_LAUNCH(emu_block_sum_kernel, blocks, 64, nullptr, in, res, false);
    } else {
      PYLSTM_LAUNCH_SYNC(emu_block_sum_kernel, blocks, 64, nullptr, in, res, diverge);
    }
  } catch (const std::logic_error& e) {
    throw std::runtime_error(e.what());
  }
  return out;
}
#endif

py::tuple status() {
  std::string why;
  const int n = gpu::device_count(&why);
  return py::make_tuple(n, why);
}

}  // namespace
}  // namespace pylstm

PYBIND11_MODULE(PYLSTM_CUDA_MODULE, m) {
  using namespace pylstm;
#if defined(PYLSTM_REAL_CUDA)
  m.doc() = "pylstm's CUDA kernels (cuBLAS GEMMs); arrays via __cuda_array_interface__";
  m.attr("emulated") = false;
#else
  m.doc() = "pylstm's CUDA kernels run on the CPU through the emulation shim (tests only); "
            "host memory wrapped in __cuda_array_interface__ stands for device memory";
  m.attr("emulated") = true;
#endif
  m.def("status", &status, "(device count, reason when 0)");
  m.def("forward_check", &forward_check, py::arg("xs"), py::arg("Wx"), py::arg("Wh"), py::arg("b"),
        py::arg("h0").none(true) = py::none(), py::arg("c0").none(true) = py::none(),
        py::arg("cell") = "lstm", py::arg("P").none(true) = py::none());
  m.def("forward_workspace_size",
        [](int64_t N, int64_t T, int64_t D, int64_t H, bool save, const std::string& cell, int device,
           const std::string& precision) {
          const bool bf16 = bind::read_precision(precision, 4, "the arrays");
          return forward_workspace(cell, SeqShape{N, T, D, H}, save, bf16) + blas_workspace_elements(device);
        },
        py::arg("N"), py::arg("T"), py::arg("D"), py::arg("H"), py::arg("save_for_backward"),
        py::arg("cell") = "lstm", py::arg("device") = -1, py::arg("precision") = "fp32",
        "Elements of `work` for forward; with `device`, also room for cuBLAS's workspace on it; with\n"
        "precision='bf16', also the bfloat16 operands' scratch.");
  m.def("backward_workspace_size",
        [](int64_t N, int64_t T, int64_t D, int64_t H, const std::string& cell, int device,
           const std::string& precision) {
          const bool bf16 = bind::read_precision(precision, 4, "the arrays");
          return backward_workspace(cell, SeqShape{N, T, D, H}, bf16) + blas_workspace_elements(device);
        },
        py::arg("N"), py::arg("T"), py::arg("D"), py::arg("H"), py::arg("cell") = "lstm",
        py::arg("device") = -1, py::arg("precision") = "fp32",
        "Elements of `work` for backward; with `device`, also room for cuBLAS's workspace on it; with\n"
        "precision='bf16', also the bfloat16 operands' scratch.");
  // One entry per pass for every cell; lstm_* are the same functions with the LSTM default.
  for (const char* name : {"forward", "lstm_forward"}) {
    m.def(name, &seq_forward, py::arg("xs"), py::arg("Wx"), py::arg("Wh"), py::arg("b"),
          py::arg("h0").none(true), py::arg("c0").none(true), py::arg("hs"), py::arg("hT"),
          py::arg("cT").none(true), py::arg("gates").none(true), py::arg("cs").none(true),
          py::arg("work").none(true), py::arg("stream") = 0, py::arg("cell") = "lstm",
          py::arg("P").none(true) = py::none(), py::arg("lengths").none(true) = py::none(),
          py::arg("lengths_dev").none(true) = py::none(), py::arg("reverse") = false,
          py::arg("precision") = "fp32");
  }
  for (const char* name : {"backward", "lstm_backward"}) {
    m.def(name, &seq_backward, py::arg("xs"), py::arg("h0").none(true),
          py::arg("c0").none(true), py::arg("Wx"), py::arg("Wh"), py::arg("b"), py::arg("hs"),
          py::arg("gates"), py::arg("cs").none(true), py::arg("dhs"), py::arg("dhT").none(true),
          py::arg("dcT").none(true), py::arg("dxs"), py::arg("dh0"), py::arg("dc0").none(true),
          py::arg("dW"), py::arg("db"), py::arg("work"), py::arg("stream") = 0,
          py::arg("cell") = "lstm", py::arg("P").none(true) = py::none(),
          py::arg("dP").none(true) = py::none(), py::arg("lengths").none(true) = py::none(),
          py::arg("lengths_dev").none(true) = py::none(), py::arg("reverse") = false,
          py::arg("precision") = "fp32");
  }
  m.def("precision_check", [](const std::string& precision, int itemsize, const std::string& owner) {
    return bind::read_precision(precision, itemsize, owner);
  }, py::arg("precision"), py::arg("itemsize"), py::arg("owner"),
        "The rule of `precision` for arrays of this itemsize (owner: the array named in errors).");
  m.def("clip_plan", &clip_plan, py::arg("grads"));
  m.def("_clip_chunk_counts", &clip_chunk_counts, py::arg("grads"));
  m.def("clip_value", &clip_value, py::arg("grads"), py::arg("limit"), py::arg("stream") = 0);
  m.def("clip_grads", &clip_grads, py::arg("grads"), py::arg("max_norm"), py::arg("work"),
        py::arg("stream") = 0);
  m.def("set_allow_tf32", &gpu::set_allow_tf32, py::arg("on"));
  m.def("set_cuda_graphs", [](bool on) {
    const bool old = gpu::get_use_graphs();
    gpu::set_use_graphs(on);
    return old;
  }, py::arg("on"), "Run each LSTM forward/backward as a cached CUDA graph; returns the old setting.");
  m.def("get_cuda_graphs", &gpu::get_use_graphs);
  m.def("_graph_stats", &gpu::graph_stats,
        "This thread's graph cache: [replays, captures of a new executable, updates to new addresses].");
  m.def("_clear_graphs", &gpu::clear_graphs);
  m.def("_set_compute_capability", &gpu::emu_set_compute_capability, py::arg("cc"),
        "Emulation only: the compute capability (10 * major + minor) the emulated device reports.");
  m.def("_set_capture_state", &gpu::emu_set_capture_state, py::arg("stream"), py::arg("state"),
        "Emulation only: the capture state (0 none, 1 capturing, 2 legacy stream blocked) reported for a stream.");
  m.def("_resource_counts", &gpu::resource_counts,
        "[cuBLAS handles, graph streams, sync events] created by this process (pooled per thread).");
#if !defined(PYLSTM_REAL_CUDA)
  m.def("_emu_selftest", &emu_selftest, py::arg("values"), py::arg("mode"));
#endif
  m.def("get_allow_tf32", &gpu::get_allow_tf32);
}
