// pybind11 module pylstm._cuda_emu: the CUDA sources of lstm_cuda.cu compiled as host C++ through
// cuda_emu.h (kernels run as sequential loops over blocks and threads, GEMMs on CPU BLAS), with
// the same entry points and checks as pylstm._cpu. It exists so that every commit runs the CUDA
// code against the NumPy reference without a GPU; it is slow and not a user-facing backend.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

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
}
