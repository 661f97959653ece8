"""Device arrays for the CUDA backend: telling them apart from host arrays, and allocating outputs
and scratch with the library the caller's arrays come from.

The CUDA kernels allocate nothing (ARCHITECTURE.md): for a call on CuPy arrays the outputs are CuPy
arrays, for PyTorch CUDA tensors they are tensors, for Numba device arrays Numba device arrays,
all on the inputs' device and filled on that library's current stream.

``EmuDeviceArray`` wraps a NumPy array behind ``__cuda_array_interface__``: host memory posing as
device memory for the emulated CUDA module (``pylstm._cuda_emu``), so that the device code path
(bindings, allocation, checks) is tested on machines without a GPU.
"""

from __future__ import annotations

import numpy as np


def is_device_array(a) -> bool:
    """True for objects exposing ``__cuda_array_interface__`` (a PyTorch CPU tensor raises on
    the attribute and counts as host)."""
    try:
        return hasattr(a, "__cuda_array_interface__")
    except Exception:  # noqa: BLE001  (a property that fails means: not a device array)
        return False


class EmuDeviceArray:
    """A NumPy array seen through ``__cuda_array_interface__`` (tests and the emulated backend)."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray):
        self.array = array

    @property
    def __cuda_array_interface__(self):
        a = self.array
        return {
            "shape": a.shape,
            "typestr": a.dtype.str,
            "data": (a.ctypes.data if a.size else 0, not a.flags.writeable),
            "strides": None if a.flags.c_contiguous else a.strides,
            "version": 3,
        }

    @property
    def shape(self):
        return self.array.shape

    @property
    def dtype(self):
        return self.array.dtype

    def __repr__(self):
        return f"EmuDeviceArray({self.array!r})"


class ArrayLib:
    """Allocation on one device with one array library, and its current stream."""


    def empty(self, shape, dtype):
        raise NotImplementedError

    def zeros(self, shape, dtype):
        raise NotImplementedError

    def stream(self) -> int:
        return 0

    def from_host(self, a: np.ndarray):
        """A device copy of the host array a (ordered on this library's current stream)."""
        raise NotImplementedError

    def wrap(self, a):
        """What the binding receives for an array of this library."""
        return a

    def split_rows(self, a, k):
        """(a[:k], a[k:]) as views."""
        return a[:k], a[k:]

    def scalar(self, work, index):
        """work[index] as a 0-d array of this library (no host synchronization)."""
        return work[index]

    def to_float(self, work, index) -> float:
        """work[index] as a Python float (a host synchronization)."""
        return float(work[index])


class EmuLib(ArrayLib):
    """Host memory for pylstm._cuda_emu. With ``host_io`` (the test backend "cuda-emu" on NumPy
    arrays) NumPy arrays are wrapped for the binding and results are NumPy arrays; without it
    (EmuDeviceArray arguments) arguments pass as they are, so a NumPy array among them is a
    host array to the binding, and results are EmuDeviceArrays."""


    def __init__(self, host_io: bool):
        self.host_io = host_io

    def _out(self, a):
        return a if self.host_io else EmuDeviceArray(a)

    def empty(self, shape, dtype):
        return self._out(np.empty(shape, dtype))

    def zeros(self, shape, dtype):
        return self._out(np.zeros(shape, dtype))

    def from_host(self, a):
        return EmuDeviceArray(np.array(a))

    def wrap(self, a):
        if self.host_io and isinstance(a, np.ndarray):
            return EmuDeviceArray(a)
        return a

    def split_rows(self, a, k):
        if isinstance(a, EmuDeviceArray):
            return EmuDeviceArray(a.array[:k]), EmuDeviceArray(a.array[k:])
        return a[:k], a[k:]

    def scalar(self, work, index):
        host = work.array if isinstance(work, EmuDeviceArray) else work
        return np.float64(host[index])

    def to_float(self, work, index) -> float:
        return float(self.scalar(work, index))


class CupyLib(ArrayLib):

    def __init__(self, device: int):
        import cupy

        self.cp = cupy
        self.device = device

    def empty(self, shape, dtype):
        with self.cp.cuda.Device(self.device):
            return self.cp.empty(shape, dtype)

    def zeros(self, shape, dtype):
        with self.cp.cuda.Device(self.device):
            return self.cp.zeros(shape, dtype)

    def from_host(self, a):
        with self.cp.cuda.Device(self.device):
            return self.cp.asarray(a)

    def stream(self) -> int:
        with self.cp.cuda.Device(self.device):
            return int(self.cp.cuda.get_current_stream().ptr)


class TorchLib(ArrayLib):

    def __init__(self, device: int):
        import torch

        self.torch = torch
        self.device = torch.device("cuda", device)

    def _dtype(self, dtype):
        return {np.dtype(np.float32): self.torch.float32, np.dtype(np.float64): self.torch.float64}[np.dtype(dtype)]

    def empty(self, shape, dtype):
        return self.torch.empty(shape, dtype=self._dtype(dtype), device=self.device)

    def zeros(self, shape, dtype):
        return self.torch.zeros(shape, dtype=self._dtype(dtype), device=self.device)

    def from_host(self, a):
        return self.torch.from_numpy(np.array(a)).to(self.device)

    def stream(self) -> int:
        return int(self.torch.cuda.current_stream(self.device).cuda_stream)


class NumbaLib(ArrayLib):

    def __init__(self, device: int):
        from numba import cuda

        self.cuda = cuda
        self.device = device

    def empty(self, shape, dtype):
        with self.cuda.gpus[self.device]:
            return self.cuda.device_array(shape, dtype)

    def zeros(self, shape, dtype):
        a = self.empty(shape, dtype)
        a[...] = 0
        return a

    def from_host(self, a):
        with self.cuda.gpus[self.device]:
            return self.cuda.to_device(np.array(a))

    def scalar(self, work, index):
        return work[index : index + 1]  # a 1-element device array: Numba has no 0-d views

    # to_float: the inherited float(work[index]) (Numba copies an indexed element to the host;
    # its one-element arrays have no __float__).


def library_of(a, device: int, name: str = "xs") -> ArrayLib:
    """The allocator for outputs like `a` (a device array) on `device`."""
    if isinstance(a, EmuDeviceArray):
        return EmuLib(host_io=False)
    module = type(a).__module__.split(".")[0]
    if module == "cupy":
        return CupyLib(device)
    if module == "torch":
        return TorchLib(device)
    if module == "numba":
        return NumbaLib(device)
    raise TypeError(
        f"{name}: pylstm allocates the outputs of device calls with CuPy, PyTorch or Numba, and "
        f"{type(a).__module__}.{type(a).__qualname__} is none of these; convert it (e.g. "
        f"cupy.asarray({name}))"
    )


# --- the Python layers' array library: NumPy on the host, CuPy on the GPU ----------------------
def array_module(a):
    """numpy, or cupy for CuPy arrays."""
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def to_host(a):
    """A NumPy copy of a CuPy array; NumPy arrays (and None) pass through."""
    if a is None or isinstance(a, np.ndarray):
        return a
    if type(a).__module__.split(".")[0] == "cupy":
        return a.get()
    return np.asarray(a)


def to_module(a, xp):
    """`a` in array library xp (numpy or cupy), copied only when it lives elsewhere."""
    if a is None:
        return None
    if xp is np:
        return to_host(a)
    return xp.asarray(a)


def device_module(device: str):
    """The array library for ``model.to(device)``: numpy for "cpu", cupy for "cuda" (needs CuPy,
    pylstm's CUDA module and a visible GPU; the error says which is missing)."""
    if device == "cpu":
        return np
    if device != "cuda":
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    from . import _backend

    n, why = _backend.cuda_status()
    if n == 0:
        raise _backend.DeviceUnavailableError(f"device 'cuda' is not available: {why}")
    try:
        import cupy
    except ImportError as exc:
        raise _backend.DeviceUnavailableError("device 'cuda' trains on CuPy arrays: pip install 'pylstm[cuda]' "
                           f"(cupy-cuda13x); importing cupy failed: {exc}") from exc
    return cupy
