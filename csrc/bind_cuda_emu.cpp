// pybind11 module pylstm._cuda_emu: the CUDA sources of lstm_cuda.cu compiled as host C++ through
// cuda_emu.h (kernels run as sequential loops over blocks and threads, GEMMs on CPU BLAS), with
// the same entry points and checks as pylstm._cpu. It exists so that every commit runs the CUDA
// code against the NumPy reference without a GPU; it is slow and not a user-facing backend.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "bind_common.h"
#include "lstm_cuda.h"

namespace py = pybind11;

namespace pylstm {
namespace {

using namespace bind;  // NOLINT: the shared checking helpers

struct EmuKernels : KernelsBase {
  template <class T, class... A>
  static void forward(A... a) {
    lstm_forward_cuda<T>(GpuContext{}, a...);
  }
  template <class T, class... A>
  static void backward(A... a) {
    lstm_backward_cuda<T>(GpuContext{}, a...);
  }
};

// Clipping through the CUDA kernels: the chunk table, partials and result live in host memory
// here (device memory in the CUDA module). Returns the norm; raises on a non-finite one.
template <class T>
double clip_emu(const py::object& grads, double max_norm, bool error_if_nonfinite) {
  std::vector<ClipChunk<T>> table;
  for (const auto& sp : spans<T>(grads)) {
    for (int64_t off = 0; off < sp.size; off += kClipChunk) {
      table.push_back({sp.data + off, std::min<int64_t>(kClipChunk, sp.size - off)});
    }
  }
  std::vector<double> partials(table.size() * kClipThreads + 1), out(3);
  {
    py::gil_scoped_release nogil;
    clip_grads_cuda<T>(GpuContext{}, table.data(), int64_t(table.size()), max_norm,
                       partials.data(), out.data());
  }
  if (out[2] == 0.0 && error_if_nonfinite) {
    const std::string msg = "grads: the global norm is " + std::to_string(out[0]) +
                            " (NaN or inf in the gradients); nothing was scaled";
    PyErr_SetString(PyExc_FloatingPointError, msg.c_str());
    throw py::error_already_set();
  }
  return out[0];
}

double clip_grads(const py::object& grads, double max_norm, bool error_if_nonfinite) {
  check_max_norm(max_norm);
  const int is = check_grad_list(grads, true);
  if (is == 0) return 0.0;
  return is == 4 ? clip_emu<float>(grads, max_norm, error_if_nonfinite)
                 : clip_emu<double>(grads, max_norm, error_if_nonfinite);
}

double global_norm(const py::object& grads) {
  const int is = check_grad_list(grads, false);
  if (is == 0) return 0.0;
  return is == 4 ? clip_emu<float>(grads, 0.0, false) : clip_emu<double>(grads, 0.0, false);
}

}  // namespace
}  // namespace pylstm

PYBIND11_MODULE(_cuda_emu, m) {
  using namespace pylstm;
  m.doc() = "pylstm's CUDA kernels run on the CPU through the emulation shim (tests only)";
  m.def("lstm_forward", &bind::lstm_forward<EmuKernels>, py::arg("xs"), py::arg("Wx"),
        py::arg("Wh"), py::arg("b"), py::arg("h0").none(true), py::arg("c0").none(true),
        py::arg("save_for_backward"));
  m.def("lstm_backward", &bind::lstm_backward<EmuKernels>, py::arg("xs"), py::arg("h0").none(true),
        py::arg("c0").none(true), py::arg("Wx"), py::arg("Wh"), py::arg("b"), py::arg("hs"),
        py::arg("gates"), py::arg("cs"), py::arg("dhs"), py::arg("dhT").none(true),
        py::arg("dcT").none(true));
  m.def("global_norm", &global_norm, py::arg("grads"));
  m.def("clip_grads", &clip_grads, py::arg("grads"), py::arg("max_norm"),
        py::arg("error_if_nonfinite") = true);
}
