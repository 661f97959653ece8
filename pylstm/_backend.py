"""The one place that imports pylstm's extension modules.

``cpu`` is the compiled module ``pylstm._cpu`` (or None with the reason in ``cpu_error``);
``cuda`` is ``pylstm._cuda`` when it was built and imports (else None, ``cuda_error`` says why);
``numpy`` (the reference) is always available. ``default_num_threads()`` reads the environment.
"""

from __future__ import annotations

import importlib.util
import os
import re

import numpy  # noqa: F401  (NumPy's own OpenBLAS loads first, under the caller's environment)


def _import_cpu():
    # The module's private OpenBLAS (scipy-openblas32) is only ever called from pylstm's own
    # thread pool, one thread per call; loading it with OPENBLAS_NUM_THREADS=1 keeps it from
    # starting idle server threads that would spin on the cores the pool uses. The variable is
    # restored at once: NumPy's OpenBLAS (a different library) was loaded before and is not
    # affected, and neither is anything loaded later.
    saved = os.environ.get("OPENBLAS_NUM_THREADS")
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        from . import _cpu
    finally:
        if saved is None:
            del os.environ["OPENBLAS_NUM_THREADS"]
        else:
            os.environ["OPENBLAS_NUM_THREADS"] = saved
    return _cpu


try:
    cpu = _import_cpu()
    cpu_error = None
except ImportError as exc:  # a broken or missing build: say why when the backend is asked for
    cpu = None
    cpu_error = exc


try:  # the CUDA sources run on the CPU through the emulation shim: a test-only backend
    from . import _cuda_emu as cuda_emu
except ImportError:
    cuda_emu = None

def _import_cuda():
    """(module, None) or (None, why): decided by facts, not by the wording of an exception. Is
    the extension file there at all (the build skips it without nvcc or cuBLAS)? If it is and
    will not load, the loader names the shared library it could not find."""
    if importlib.util.find_spec(f"{__package__}._cuda") is None:
        return None, ("pylstm was built without its CUDA module (the build found no nvcc or no cuBLAS); "
                      "rebuild with PYLSTM_CUDA=ON pip install . (or CMAKE_ARGS=-DPYLSTM_CUDA=ON), "
                      "with nvcc on the PATH")
    try:
        from . import _cuda
    except ImportError as exc:
        missing = re.search(r"(lib[\w.+-]+\.so[\w.]*): cannot open shared object file", str(exc))
        if missing:
            return None, (f"pylstm._cuda is built but the shared library {missing.group(1)} it needs is not "
                          "installed: pip install 'pylstm[cuda]' (the nvidia-cublas wheel and CuPy)")
        return None, f"pylstm._cuda is built but failed to import: {exc}"
    return _cuda, None


cuda, cuda_error = _import_cuda()


class DeviceUnavailableError(RuntimeError):
    """The CUDA backend or a GPU was asked for and is not there (the message says why)."""


def cuda_status() -> tuple:
    """(number of usable GPUs, reason when there are none)."""
    if cuda is None:
        return 0, cuda_error
    n, why = cuda.status()
    if n == 0:
        return 0, f"pylstm's CUDA module is built but no GPU is visible ({why})"
    return n, ""


def set_cuda_graphs(enabled: bool) -> bool:
    """Run each CUDA LSTM forward and backward as a CUDA graph (one launch per call instead of
    two per time step), captured on the first call with given arrays and shape and replayed on
    later calls with the same ones (a training loop whose array library reuses its memory, as
    CuPy's pool does, hits the cache every step). Off by default. Returns the previous setting.
    Without the CUDA module this only records the choice for the emulated backend (tests)."""
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    old = False
    for mod in (cuda_emu, cuda):
        if mod is not None:
            old = mod.set_cuda_graphs(enabled)
    return old


def require_cuda():
    """The compiled CUDA module with at least one GPU, or RuntimeError saying why not."""
    n, why = cuda_status()
    if n == 0:
        raise DeviceUnavailableError(f"backend 'cuda' is not available: {why}")
    return cuda


def default_num_threads() -> int:
    """Thread count from PYLSTM_NUM_THREADS, OMP_NUM_THREADS or OPENBLAS_NUM_THREADS (first set
    wins), else the number of CPUs this process may run on."""
    for var in ("PYLSTM_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value:
            try:
                n = int(value.split(",")[0])
            except ValueError:
                continue
            if n >= 1:
                return min(n, 2**31 - 1)  # set_num_threads caps it at the CPUs
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def require_cpu():
    """The compiled CPU module, or ImportError explaining why it is missing."""
    if cpu is None:
        raise ImportError(
            f"the pylstm CPU extension (pylstm._cpu) failed to import: {cpu_error}; "
            "reinstall pylstm (pip install .) or use backend='numpy'"
        )
    return cpu


if cpu is not None:
    cpu.set_num_threads(default_num_threads())


if os.environ.get("PYLSTM_CUDA_GRAPHS", "") not in ("", "0"):
    set_cuda_graphs(True)
